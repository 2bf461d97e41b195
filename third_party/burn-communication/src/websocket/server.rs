use std::net::SocketAddr;

use crate::{
    base::{CommunicationChannel, CommunicationError, Message, ProtocolServer},
    util::init_logging,
};
use crate::websocket::auth::{Challenge, HANDSHAKE_TIMEOUT};
use axum::{
    Router,
    extract::{
        ConnectInfo, State, WebSocketUpgrade,
        ws::{self, WebSocket},
    },
    routing::get,
};
use futures::StreamExt;

/// splitmask-rs: the largest message a server reads (upstream: axum's 64 MiB).
const MAX_REQUEST_BYTES: usize = 16 << 20;

#[derive(Clone, Debug)]
pub struct WsServer {
    // splitmask-rs: the host to bind (upstream bound 0.0.0.0 whatever the node's address).
    host: String,
    port: u16,
    router: Router<()>,
}

pub struct WsServerChannel {
    inner: WebSocket,
}

impl WsServer {
    /// A server on `host:port` (a name or an address of this machine's).
    pub fn new(host: &str, port: u16) -> Self {
        Self {
            host: host.to_owned(),
            port,
            router: Router::new(),
        }
    }
}

/// splitmask-rs: the server's side of the peer handshake (see `auth`).
async fn authenticate(socket: &mut WebSocket) -> Result<(), String> {
    let (challenge, hello) = Challenge::new()?;
    let io = |e: axum::Error| e.to_string();
    socket.send(ws::Message::Binary(hello.into())).await.map_err(io)?;
    let answer = match socket.next().await {
        Some(Ok(ws::Message::Binary(answer))) => answer,
        Some(Ok(_)) => return Err("the handshake answer is not a binary message".into()),
        Some(Err(e)) => return Err(io(e)),
        None => return Err("the peer left during the handshake".into()),
    };
    let proof = challenge.verify(&answer)?;
    socket.send(ws::Message::Binary(proof.into())).await.map_err(io)
}

impl ProtocolServer for WsServer {
    type Channel = WsServerChannel;
    type Error = WsServerError;

    async fn serve<F>(self, shutdown: F) -> Result<(), Self::Error>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        init_logging();

        let address = format!("{}:{}", self.host, self.port);
        log::info!("Starting server {address}");

        let listener = tokio::net::TcpListener::bind(address).await?;

        axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await?;

        Ok(())
    }

    fn route<C, Fut>(mut self, path: &str, callback: C) -> Self
    where
        C: FnOnce(WsServerChannel) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Format path: should start with a /
        let path = if path.starts_with("/") {
            path.to_owned()
        } else {
            format!("/{path}")
        };

        // splitmask-rs: no route reads a message before the peer has authenticated.
        let method = get(
            |ws: WebSocketUpgrade, ConnectInfo(peer): ConnectInfo<SocketAddr>, _: State<()>| async move {
                // Servers read only requests (collective messages, tensor ids): a peer's message
                // is capped well below what could exhaust memory.
                ws.max_message_size(MAX_REQUEST_BYTES)
                    .max_frame_size(MAX_REQUEST_BYTES)
                    .on_upgrade(async move |mut socket| {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, authenticate(&mut socket)).await {
                        Ok(Ok(())) => callback(WsServerChannel { inner: socket }).await,
                        Ok(Err(e)) => log::warn!("refused a connection from {peer}: {e}"),
                        Err(_) => log::warn!("refused a connection from {peer}: the handshake timed out"),
                    }
                })
            },
        );

        self.router = self.router.route(&path, method);

        self
    }
}

impl CommunicationChannel for WsServerChannel {
    type Error = WsServerError;

    async fn send(&mut self, message: Message) -> Result<(), WsServerError> {
        self.inner.send(ws::Message::Binary(message.data)).await?;

        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<Message>, WsServerError> {
        match self.inner.next().await {
            Some(next) => match next {
                Ok(ws::Message::Binary(data)) => Ok(Some(Message { data })),
                Ok(ws::Message::Close(_close_frame)) => Ok(None),
                Err(err) => Err(WsServerError::Axum(err)),
                msg => Err(WsServerError::UnknownMessage(format!("{msg:?}"))),
            },
            // splitmask-rs: a stream that ended is a closed connection (upstream: todo!()).
            None => Ok(None),
        }
    }

    async fn close(&mut self) -> Result<(), WsServerError> {
        let reason = "Peer is closing".to_string();

        self.inner
            .send(ws::Message::Close(Some(ws::CloseFrame {
                code: 1000, // code: Normal
                reason: reason.clone().into(),
            })))
            .await?;

        Ok(())
    }
}

#[derive(Debug)]
pub enum WsServerError {
    Io(std::io::Error),
    Axum(axum::Error),
    UnknownMessage(String),
    Other(String),
}

impl CommunicationError for WsServerError {}

impl From<std::io::Error> for WsServerError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err)
    }
}

impl From<axum::Error> for WsServerError {
    fn from(err: axum::Error) -> Self {
        Self::Axum(err)
    }
}
