//! The agent's side of the API: an axum router on a unix socket. Handlers
//! never touch state: they send a `Command` to the agent's loop and wait for
//! its answer. Logs and exec read from Docker directly once the loop has
//! named the containers (they change nothing Fizz owns).

use std::{collections::BTreeMap, path::Path};

use axum::{
    body::Body,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};

use super::{DownRequest, ErrorBody, ExecRequest, ExecResponse, LabelRequest, PsResponse, ScaleRequest, UpRequest, UpResponse};
use crate::{
    agent::{ApiError, Command, Target},
    docker::Docker,
};

#[derive(Clone)]
struct Ctx {
    tx: mpsc::Sender<Command>,
    docker: Docker,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(ErrorBody { error: self.to_string() })).into_response()
    }
}

async fn ask<T>(ctx: &Ctx, make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Command) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    ctx.tx.send(make(tx)).await.map_err(|_| ApiError::Unavailable("the agent is shutting down".into()))?;
    rx.await.map_err(|_| ApiError::Unavailable("the agent dropped the request".into()))?
}

async fn up(State(ctx): State<Ctx>, Json(req): Json<UpRequest>) -> Result<Json<UpResponse>, ApiError> {
    // Every image must be on this host (pulled if need be) before anything
    // is stored: a project that cannot run is refused whole.
    let mut images: Vec<(&String, &String)> = req.project.services.iter().map(|(n, s)| (n, &s.template.image)).collect();
    images.sort_by(|a, b| a.1.cmp(b.1));
    images.dedup_by(|a, b| a.1 == b.1);
    for (service, image) in images {
        ctx.docker.ensure_image(image).await.map_err(|e| ApiError::Invalid(format!("services.{service}.image: {e}")))?;
    }
    ask(&ctx, |reply| Command::Up { project: Box::new(req.project), reply }).await.map(Json)
}

async fn down(State(ctx): State<Ctx>, Json(req): Json<DownRequest>) -> Result<Json<()>, ApiError> {
    ask(&ctx, |reply| Command::Down { project: req.project, volumes: req.volumes, reply }).await.map(Json)
}

async fn scale(State(ctx): State<Ctx>, Json(req): Json<ScaleRequest>) -> Result<Json<()>, ApiError> {
    ask(&ctx, |reply| Command::Scale { project: req.project, service: req.service, replicas: req.replicas, reply })
        .await
        .map(Json)
}

async fn ps(State(ctx): State<Ctx>, Query(q): Query<BTreeMap<String, String>>) -> Result<Json<PsResponse>, ApiError> {
    ask(&ctx, |reply| Command::Ps { project: q.get("project").cloned(), reply }).await.map(Json)
}

async fn label(State(ctx): State<Ctx>, Json(req): Json<LabelRequest>) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    ask(&ctx, |reply| Command::Label { req, reply }).await.map(Json)
}

async fn exec(State(ctx): State<Ctx>, Json(req): Json<ExecRequest>) -> Result<Json<ExecResponse>, ApiError> {
    let target = Target { project: req.project.clone(), service: Some(req.service.clone()), replica: req.replica };
    let found = ask(&ctx, |reply| Command::Find { target, reply }).await?;
    let c = found.iter().find(|c| c.state == crate::docker::RunState::Running).ok_or_else(|| {
        let what = match req.replica {
            Some(r) => format!("{}-{}-{} is not running on this node", req.project, req.service, r),
            None => format!("no replica of {}/{} runs on this node", req.project, req.service),
        };
        ApiError::NotFound(format!("{what} (`fizz ps` shows where replicas run)"))
    })?;
    let (exit_code, output) = ctx.docker.exec(&c.id, &req.cmd).await.map_err(|e| ApiError::Failed(e.to_string()))?;
    Ok(Json(ExecResponse { exit_code, output }))
}

async fn logs(State(ctx): State<Ctx>, Query(q): Query<BTreeMap<String, String>>) -> Result<Response, ApiError> {
    let project = q.get("project").cloned().ok_or_else(|| ApiError::Invalid("logs needs ?project=".into()))?;
    let follow = q.get("follow").is_some_and(|v| v == "true");
    let tail = q.get("tail").and_then(|t| t.parse().ok());
    let target = Target { project, service: q.get("service").cloned(), replica: None };
    let found = ask(&ctx, |reply| Command::Find { target, reply }).await?;
    let width = found.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let streams = found.into_iter().map(|c| {
        let prefix = format!("{:width$} | ", c.name);
        ctx.docker.logs(&c.id, follow, tail).map(move |chunk| match chunk {
            Ok(text) => Ok::<_, std::io::Error>(text.lines().map(|l| format!("{prefix}{l}\n")).collect::<String>()),
            Err(e) => Ok(format!("{prefix}(logs ended: {e})\n")),
        })
    });
    let merged = futures_util::stream::select_all(streams);
    Ok(Response::new(Body::from_stream(merged)))
}

async fn cluster_init(State(ctx): State<Ctx>) -> Result<Json<super::InitResponse>, ApiError> {
    ask(&ctx, |reply| Command::ClusterInit { reply }).await.map(Json)
}

async fn join_token(State(ctx): State<Ctx>, Json(req): Json<super::JoinTokenRequest>) -> Result<Json<super::JoinTokenResponse>, ApiError> {
    ask(&ctx, |reply| Command::JoinToken { rotate: req.rotate, reply }).await.map(Json)
}

/// Asks the seeds for the cluster secret with the token (a member answers only the current
/// token), joins, then waits until a seed has answered gossip; a join that reaches no one is
/// undone.
async fn cluster_join(State(ctx): State<Ctx>, Json(req): Json<super::JoinRequest>) -> Result<Json<()>, ApiError> {
    let join_secret = crate::agent::cluster::parse_token(&req.token).map_err(|e| ApiError::Invalid(e.to_string()))?;
    if req.seeds.is_empty() {
        return Err(ApiError::Invalid("join needs the address of at least one member".into()));
    }
    let refused = || {
        let seeds: Vec<String> = req.seeds.iter().map(|s| s.to_string()).collect();
        ApiError::Invalid(format!(
            "no member answered at {}: the token is wrong (or was rotated), or the address is not reachable; nothing was changed",
            seeds.join(", ")
        ))
    };
    let mut secret = None;
    for seed in &req.seeds {
        // The state sync port has the gossip port's number.
        match crate::state::sync::welcome(*seed, &join_secret).await {
            Ok(s) => {
                secret = Some(s);
                break;
            }
            Err(e) => eprintln!("fizz agent: joining: {e}"),
        }
    }
    let secret = secret.ok_or_else(refused)?;
    let seeds = req.seeds.clone();
    ask(&ctx, |reply| Command::ClusterJoin { secret, seeds, reply }).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let nodes = ask(&ctx, |reply| Command::Nodes { reply }).await?;
        if nodes.nodes.iter().any(|n| !n.local && n.state == "alive") {
            return Ok(Json(()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ask(&ctx, |reply| Command::ClusterAbort { reply }).await?;
    Err(refused())
}

async fn nodes(State(ctx): State<Ctx>) -> Result<Json<super::NodesResponse>, ApiError> {
    ask(&ctx, |reply| Command::Nodes { reply }).await.map(Json)
}

async fn node_rm(State(ctx): State<Ctx>, Json(req): Json<super::NodeRmRequest>) -> Result<Json<()>, ApiError> {
    ask(&ctx, |reply| Command::NodeRm { node: req.node, reply }).await.map(Json)
}

async fn rotate_key(State(ctx): State<Ctx>) -> Result<Json<super::RotateKeyResponse>, ApiError> {
    ask(&ctx, |reply| Command::RotateKey { reply }).await.map(Json)
}

/// The router, for a loop reached through `tx`.
pub fn router(tx: mpsc::Sender<Command>, docker: Docker) -> Router {
    Router::new()
        .route("/v1/up", post(up))
        .route("/v1/down", post(down))
        .route("/v1/scale", post(scale))
        .route("/v1/ps", get(ps))
        .route("/v1/exec", post(exec))
        .route("/v1/logs", get(logs))
        .route("/v1/cluster/init", post(cluster_init))
        .route("/v1/cluster/join", post(cluster_join))
        .route("/v1/cluster/join-token", post(join_token))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/labels", post(label))
        .route("/v1/nodes/rm", post(node_rm))
        .route("/v1/node/rotate-key", post(rotate_key))
        .with_state(Ctx { tx, docker })
}

/// Binds the API's unix socket, replacing a stale socket file. Only root may
/// connect (mode 0600).
pub fn bind(socket: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
