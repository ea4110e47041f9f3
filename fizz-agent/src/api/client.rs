//! The CLI's side of the API: HTTP/1.1 over the agent's unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Full};
use hyper::{body::Bytes, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};

use super::ErrorBody;

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket cannot be reached: the agent is not running here.
    #[error("cannot reach the agent at {path}: {source} (is `fizz agent` running? see `fizz install`)")]
    Connect { path: PathBuf, #[source] source: std::io::Error },
    /// The HTTP exchange failed.
    #[error("talking to the agent: {0}")]
    Http(#[from] hyper::Error),
    /// The agent refused the request; its message says why.
    #[error("{0}")]
    Refused(String),
    /// The answer could not be decoded.
    #[error("the agent's answer is not valid: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A connection factory for the agent's socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client { socket: socket.to_path_buf() }
    }

    async fn send(&self, method: Method, path: &str, body: Vec<u8>) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect { path: self.socket.clone(), source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(format!("http://fizz{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a request from valid parts");
        Ok(sender.send_request(req).await?)
    }

    /// Sends a JSON request and decodes the JSON answer.
    pub async fn call<B: Serialize, R: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&B>) -> Result<R, ClientError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let resp = self.send(method, path, bytes).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            let msg = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("{status}: {}", String::from_utf8_lossy(&body)));
            return Err(ClientError::Refused(msg));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Streams a text answer chunk by chunk into `sink` (logs).
    pub async fn stream(&self, path: &str, mut sink: impl FnMut(&[u8])) -> Result<(), ClientError> {
        let resp = self.send(Method::GET, path, Vec::new()).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if status != StatusCode::OK {
            let bytes = body.collect().await?.to_bytes();
            let msg = serde_json::from_slice::<ErrorBody>(&bytes).map(|e| e.error).unwrap_or_else(|_| status.to_string());
            return Err(ClientError::Refused(msg));
        }
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                sink(&data);
            }
        }
        Ok(())
    }
}
