//! The multi-node mode's connections: a peer is heard only after it proves it knows the
//! cluster secret (burn-communication as patched in `third_party/`).

use std::time::Duration;

use burn_communication::websocket::{set_cluster_secret, WsClient, WsServer};
use burn_communication::{Address, CommunicationChannel, Message, ProtocolClient, ProtocolServer};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Frame;

#[test]
fn only_peers_that_know_the_cluster_secret_are_heard() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        set_cluster_secret(b"the secret of this test, 32 bytes").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (heard, mut hears) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let server = WsServer::new("127.0.0.1", port).route("/echo", move |mut channel| async move {
            while let Ok(Some(msg)) = channel.recv().await {
                heard.send(msg.data.to_vec()).unwrap();
                if channel.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        let url = format!("ws://127.0.0.1:{port}");
        let address: Address = url.parse().unwrap();

        // A node with the secret: its messages reach the route (after the server is up).
        let mut node = None;
        for _ in 0..100 {
            node = WsClient::connect(address.clone(), "echo").await;
            if node.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut node = node.expect("a node that knows the secret connects");
        node.send(Message::new(b"gradients".to_vec().into())).await.unwrap();
        let echo = node.recv().await.unwrap().unwrap();
        assert_eq!(echo.data.as_ref(), b"gradients");

        // Strangers: one that speaks first, one that answers the challenge with a guess of the
        // right length. The server challenges each, hears nothing, and hangs up.
        for answer in [b"Init Finish Finish".to_vec(), vec![7u8; 64]] {
            let (mut stranger, _) = tokio_tungstenite::connect_async(format!("{url}/echo")).await.unwrap();
            let challenge = tokio::time::timeout(Duration::from_secs(20), stranger.next())
                .await
                .expect("the server speaks first")
                .unwrap()
                .unwrap();
            assert!(
                challenge.into_data().starts_with(b"bcauth01"),
                "the server speaks first"
            );
            stranger.send(Frame::Binary(answer.into())).await.unwrap();
            let after = tokio::time::timeout(Duration::from_secs(20), stranger.next())
                .await
                .expect("the server hangs up on a wrong answer");
            assert!(
                !matches!(after, Some(Ok(Frame::Binary(_)))),
                "a stranger got an answer: {after:?}"
            );
        }
        node.close().await.unwrap();
        drop(node);
        stop.send(()).unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
        assert_eq!(hears.recv().await.unwrap(), b"gradients");
        assert!(hears.try_recv().is_err(), "the route heard only the node");
    });
}
