//! The generated client and server talk to each other over loopback: a
//! session (hello → welcome + complete set) and a data stream answering a
//! request id.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;

use shoal_proto::v1::{agent_message, control_message};
use shoal_proto::{
    AgentMessage, AssignmentSet, ControlMessage, DataAck, Dispatcher, DispatcherClient,
    DispatcherServer, LogChunk, StatsChunk, Welcome,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

#[derive(Debug)]
struct FakeDispatcher;

type ControlStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Dispatcher for FakeDispatcher {
    type SessionStream = ControlStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty session"))?;
        let Some(agent_message::Message::Hello(hello)) = first.message else {
            return Err(Status::failed_precondition("first message must be a hello"));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Ok(ControlMessage {
            message: Some(control_message::Message::Welcome(Welcome {
                cluster_id: format!("cluster-for-{}", hello.host_name),
                heartbeat_interval_ms: 500,
                heartbeat_misses: 4,
                server_version: "test".into(),
            })),
        }))
        .await
        .unwrap();
        tx.send(Ok(ControlMessage {
            message: Some(control_message::Message::AssignmentSet(AssignmentSet {
                sequence: 1,
                assignments: vec![],
            })),
        }))
        .await
        .unwrap();
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn send_logs(
        &self,
        request: Request<Streaming<LogChunk>>,
    ) -> Result<Response<DataAck>, Status> {
        let mut inbound = request.into_inner();
        let mut chunks = 0;
        while let Some(chunk) = inbound.message().await? {
            assert_eq!(chunk.request_id, 7);
            chunks += 1;
        }
        Ok(Response::new(DataAck {
            chunks_received: chunks,
        }))
    }

    async fn join(
        &self,
        _request: Request<shoal_proto::JoinRequest>,
    ) -> Result<Response<shoal_proto::JoinResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn renew(
        &self,
        _request: Request<shoal_proto::RenewRequest>,
    ) -> Result<Response<shoal_proto::JoinResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn send_stats(
        &self,
        _request: Request<Streaming<StatsChunk>>,
    ) -> Result<Response<DataAck>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type ExecSessionStream = tokio_stream::Empty<Result<shoal_proto::ExecInput, Status>>;

    async fn exec_session(
        &self,
        _request: Request<Streaming<LogChunk>>,
    ) -> Result<Response<Self::ExecSessionStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

#[tokio::test]
async fn session_and_data_stream_over_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DispatcherServer::new(FakeDispatcher))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut client = DispatcherClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let hello = AgentMessage {
        message: Some(agent_message::Message::Hello(shoal_proto::Hello {
            host_name: "h1".into(),
            session_id: "s".into(),
            ..Default::default()
        })),
    };
    let mut control = client
        .session(tokio_stream::iter(vec![hello]))
        .await
        .unwrap()
        .into_inner();
    let welcome = control.next().await.unwrap().unwrap();
    assert!(matches!(
        welcome.message,
        Some(control_message::Message::Welcome(Welcome { ref cluster_id, .. })) if cluster_id == "cluster-for-h1"
    ));
    let set = control.next().await.unwrap().unwrap();
    assert!(matches!(
        set.message,
        Some(control_message::Message::AssignmentSet(AssignmentSet {
            sequence: 1,
            ..
        }))
    ));
    assert!(control.next().await.is_none());

    let chunks = (0..3).map(|_| LogChunk {
        request_id: 7,
        lines: vec![],
        exit_code: None,
    });
    let ack = client
        .send_logs(tokio_stream::iter(chunks))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.chunks_received, 3);

    server.abort();
}
