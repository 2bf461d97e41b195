use std::fmt::Debug;
use std::sync::Arc;
use tokio::sync::Mutex;

use crate::PeerId;
use crate::global::{
    orchestrator::state::GlobalCollectiveState,
    shared::{CollectiveMessage, GlobalCollectiveError, RemoteRequest, RequestId, SessionId},
};
use burn_communication::{
    CommunicationChannel, Message, ProtocolServer, util::os_shutdown_signal, websocket::WsServer,
};

/// The global collective state manages collective operations on the global level
#[derive(Clone)]
pub(crate) struct GlobalOrchestrator {
    state: Arc<Mutex<GlobalCollectiveState>>,
}

impl GlobalOrchestrator {
    /// Starts the comms server with two routes: "/request" and "/response"
    pub(crate) async fn start<F, S: ProtocolServer + Debug>(
        shutdown_signal: F,
        comms_server: S,
    ) -> Result<(), GlobalCollectiveError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let state = GlobalCollectiveState::new();
        let server = Self {
            state: Arc::new(tokio::sync::Mutex::new(state)),
        };

        comms_server
            .route("/response", {
                let server = server.clone();
                async move |socket| {
                    if let Err(err) = server.handle_socket_response::<S>(socket).await {
                        log::error!("[Response Handler] Error: {err:?}")
                    }
                }
            })
            .route("/request", {
                let server = server.clone();
                async move |socket| {
                    if let Err(err) = server.handle_socket_request::<S>(socket).await {
                        log::error!("[Request Handler] Error: {err:?}")
                    }
                }
            })
            .serve(shutdown_signal)
            .await
            .map_err(|err| GlobalCollectiveError::Server(format!("{err:?}")))?;

        Ok(())
    }

    async fn handle_socket_response<S: ProtocolServer>(
        self,
        mut stream: S::Channel,
    ) -> Result<(), GlobalCollectiveError> {
        log::info!("[Response Handler] On new connection.");

        let msg = stream
            .recv()
            .await
            .map_err(|err| GlobalCollectiveError::Server(format!("{err:?}")))?;
        let Some(msg) = msg else {
            log::warn!("Response socket closed early!");
            return Ok(());
        };

        let msg = rmp_serde::from_slice::<CollectiveMessage>(&msg.data)
            .map_err(|_| GlobalCollectiveError::InvalidMessage)?;

        let CollectiveMessage::Init(id) = msg else {
            return Err(GlobalCollectiveError::FirstMsgNotInit);
        };

        let mut receiver = {
            let mut state = self.state.lock().await;
            state.get_session_responder(id)
        }
        .ok_or(GlobalCollectiveError::InvalidMessage)?;

        while let Some(response) = receiver.recv().await {
            let bytes = rmp_serde::to_vec(&response).map_err(|_| GlobalCollectiveError::InvalidMessage)?;

            stream.send(Message::new(bytes.into())).await?;
        }

        log::info!("[Response Handler] Closing connection.");
        Ok(())
    }

    async fn handle_socket_request<S: ProtocolServer>(
        self,
        mut stream: S::Channel,
    ) -> Result<(), GlobalCollectiveError> {
        log::info!("[Request Handler] On new connection.");

        let mut session_id = None;

        loop {
            let packet = stream.recv().await?;
            let Some(msg) = packet else {
                log::info!("Peer closed the connection");
                break;
            };

            let mut state = self.state.lock().await;
            handle_request(&mut state, &mut session_id, &msg.data).await?;
        }

        Ok(())
    }
}

/// One message on a request stream: `Init` names the stream's session, requests need one.
async fn handle_request(
    state: &mut GlobalCollectiveState,
    session_id: &mut Option<SessionId>,
    bytes: &[u8],
) -> Result<(), GlobalCollectiveError> {
    let msg = rmp_serde::from_slice::<CollectiveMessage>(bytes)
        .map_err(|_| GlobalCollectiveError::InvalidMessage)?;
    match msg {
        CollectiveMessage::Init(id) => {
            state.init_session(id);
            *session_id = Some(id);
        }
        CollectiveMessage::Request(request_id, remote_request) => {
            let session = session_id.ok_or(GlobalCollectiveError::FirstMsgNotInit)?;
            state.process_request(session, request_id, remote_request).await;
        }
    }
    Ok(())
}

/// splitmask-rs: a request stream's messages handled as the orchestrator handles them, without
/// a network, until one is refused (a fuzz target: a peer's bytes give errors, never a panic
/// or a wait). Returns how many were accepted.
pub fn replay_requests(messages: &[&[u8]]) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let mut state = GlobalCollectiveState::new();
        let mut session_id = None;
        let mut accepted = 0;
        for bytes in messages {
            if handle_request(&mut state, &mut session_id, bytes).await.is_err() {
                break;
            }
            accepted += 1;
        }
        accepted
    })
}

/// splitmask-rs: what one node sends on its request stream in a two-node run (`Init`,
/// `Register`, `Finish`): seeds for fuzzing [`replay_requests`].
pub fn sample_requests() -> Vec<Vec<u8>> {
    let node_addr = "ws://127.0.0.1:3001".parse().expect("a valid address");
    let register = RemoteRequest::Register {
        node_addr,
        num_nodes: 2,
        peers: vec![PeerId(0), PeerId(1)],
    };
    [
        CollectiveMessage::Init(SessionId::new()),
        CollectiveMessage::Request(RequestId::new(), register),
        CollectiveMessage::Request(RequestId::new(), RemoteRequest::Finish),
    ]
    .iter()
    .map(|m| rmp_serde::to_vec(m).expect("a message serializes"))
    .collect()
}

/// Start a global orchestrator with WebSocket on the given host and port (splitmask-rs: the
/// host; upstream bound 0.0.0.0)
pub async fn start_global_orchestrator(host: &str, port: u16) {
    let server = WsServer::new(host, port);
    let res = GlobalOrchestrator::start(os_shutdown_signal(), server).await;
    if let Err(err) = res {
        log::error!("Global Collective Orchestrator error: {err:?}");
    }
}
