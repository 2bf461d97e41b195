use crate::{
    base::{Address, CommunicationChannel, CommunicationError, Message, ProtocolClient},
    websocket::auth::{Answer, HANDSHAKE_TIMEOUT},
    websocket::base::parse_ws_address,
};
use burn_std::future::DynFut;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async_with_config,
    tungstenite::{self, protocol::WebSocketConfig},
};

#[derive(Clone)]
pub struct WsClient;

impl ProtocolClient for WsClient {
    type Channel = WsClientChannel;
    type Error = WsClientError;

    fn connect(address: Address, route: &str) -> DynFut<Option<WsClientChannel>> {
        Box::pin(connect_ws(address, route.to_owned()))
    }
}

/// Open a new WebSocket connection to the address
async fn connect_ws(address: Address, route: String) -> Option<WsClientChannel> {
    let address = parse_ws_address(address).ok()?;
    let address = format!("{address}/{route}");
    const MB: usize = 1024 * 1024;
    let (stream, _) = connect_async_with_config(
        address.clone(),
        Some(
            WebSocketConfig::default()
                .write_buffer_size(0)
                // splitmask-rs: bounded (upstream: None); a tensor slice of a ViT-g gradient fits.
                .max_message_size(Some(MB * 8192))
                .max_frame_size(Some(MB * 512))
                .accept_unmasked_frames(true)
                .read_buffer_size(64 * 1024), // 64 KiB (previous default)
        ),
        true,
    )
    .await
    .ok()?;
    let mut channel = WsClientChannel { inner: stream };
    // splitmask-rs: a server that cannot prove it knows the cluster secret gets nothing.
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, authenticate(&mut channel)).await {
        Ok(Ok(())) => Some(channel),
        Ok(Err(e)) => {
            log::error!("not connecting to {address}: {e}");
            None
        }
        Err(_) => {
            log::error!("not connecting to {address}: the handshake timed out");
            None
        }
    }
}

/// splitmask-rs: the client's side of the peer handshake (see `auth`).
async fn authenticate(channel: &mut WsClientChannel) -> Result<(), String> {
    let hello = handshake_message(channel).await?;
    let (answer, reply) = Answer::new(&hello)?;
    channel
        .send(Message::new(reply.into()))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let proof = handshake_message(channel).await?;
    answer.verify(&proof)
}

async fn handshake_message(channel: &mut WsClientChannel) -> Result<bytes::Bytes, String> {
    match channel.recv().await {
        Ok(Some(msg)) => Ok(msg.data),
        Ok(None) => Err("the server closed the connection (a wrong cluster secret?)".to_string()),
        Err(e) => Err(format!("{e:?}")),
    }
}
pub struct WsClientChannel {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl CommunicationChannel for WsClientChannel {
    type Error = WsClientError;

    async fn send(&mut self, msg: Message) -> Result<(), WsClientError> {
        self.inner
            .send(tungstenite::Message::Binary(msg.data))
            .await?;

        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<Message>, WsClientError> {
        match self.inner.next().await {
            Some(next) => match next {
                Ok(tungstenite::Message::Binary(data)) => Ok(Some(Message { data })),
                Ok(tungstenite::Message::Close(_close_frame)) => Ok(None),
                Err(err) => Err(WsClientError::Tungstenite(err)),
                msg => Err(WsClientError::UnknownMessage(format!("{msg:?}"))),
            },
            // splitmask-rs: a stream that ended is a closed connection (upstream: todo!()).
            None => Ok(None),
        }
    }

    async fn close(&mut self) -> Result<(), WsClientError> {
        let reason = "Peer is closing".to_string();

        self.inner
            .send(tungstenite::Message::Close(Some(
                tungstenite::protocol::CloseFrame {
                    code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                    reason: reason.clone().into(),
                },
            )))
            .await?;

        Ok(())
    }
}

#[derive(Debug)]
pub enum WsClientError {
    Io(std::io::Error),
    Tungstenite(tungstenite::Error),
    UnknownMessage(String),
    Other(String),
}
impl CommunicationError for WsClientError {}

impl From<std::io::Error> for WsClientError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

impl From<tungstenite::Error> for WsClientError {
    fn from(err: tungstenite::Error) -> Self {
        Self::Tungstenite(err)
    }
}
