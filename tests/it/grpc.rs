//! gRPC through gatewise with tonic on both ends (no protoc: hand-written prost messages, tonic's
//! client and server codecs over hyper's HTTP/2): unary and server-streaming calls pass with
//! their statuses and trailers untouched; calls gatewise fails itself are answered in gRPC form
//! (UNAVAILABLE with the cause in the message, DEADLINE_EXCEEDED when `grpc-timeout` runs out).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use gatewise::config::UpstreamProtocol;
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::metadata::MetadataValue;
use tonic::server::{Grpc as GrpcServer, ServerStreamingService, UnaryService};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::support::{self, config, route_of, upstream, upstream_of};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Echo {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

type Reply<T> = Pin<Box<dyn Future<Output = Result<tonic::Response<T>, Status>> + Send>>;

/// `/test.Echo/Unary`: echoes the text after `delay`; text "fail" gets NOT_FOUND with
/// trailer metadata.
struct Unary {
    delay: Duration,
}

impl UnaryService<Echo> for Unary {
    type Response = Echo;
    type Future = Reply<Echo>;

    fn call(&mut self, req: tonic::Request<Echo>) -> Self::Future {
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let msg = req.into_inner();
            if msg.text == "fail" {
                let mut meta = tonic::metadata::MetadataMap::new();
                meta.insert("x-detail", MetadataValue::from_static("from-upstream"));
                return Err(Status::with_metadata(Code::NotFound, "no such thing", meta));
            }
            let mut resp = tonic::Response::new(Echo {
                text: format!("echo {}", msg.text),
                count: msg.count + 1,
            });
            resp.metadata_mut()
                .insert("x-upstream", MetadataValue::from_static("yes"));
            Ok(resp)
        })
    }
}

type EchoStream = futures_util::stream::Iter<std::vec::IntoIter<Result<Echo, Status>>>;

/// `/test.Echo/Stream`: `count` messages, then OK.
struct Streamer;

impl ServerStreamingService<Echo> for Streamer {
    type Response = Echo;
    type ResponseStream = EchoStream;
    type Future = Reply<EchoStream>;

    fn call(&mut self, req: tonic::Request<Echo>) -> Self::Future {
        Box::pin(async move {
            let msg = req.into_inner();
            let items: Vec<Result<Echo, Status>> = (0..msg.count)
                .map(|i| {
                    Ok(Echo {
                        text: format!("{} #{i}", msg.text),
                        count: i,
                    })
                })
                .collect();
            Ok(tonic::Response::new(futures_util::stream::iter(items)))
        })
    }
}

/// A tonic gRPC server over hyper's HTTP/2 with prior knowledge (h2c).
async fn grpc_upstream(delay: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = upstream::bind_any().await;
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<Incoming>| async move {
                        let codec = ProstCodec::<Echo, Echo>::default();
                        let resp = match req.uri().path() {
                            "/test.Echo/Unary" => {
                                GrpcServer::new(codec).unary(Unary { delay }, req).await
                            }
                            "/test.Echo/Stream" => {
                                GrpcServer::new(codec).server_streaming(Streamer, req).await
                            }
                            _ => Status::unimplemented("no such method").into_http(),
                        };
                        Ok::<_, Infallible>(resp)
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

type GrpcClient = tonic::client::Grpc<Client<HttpConnector, tonic::body::Body>>;

/// A tonic client speaking h2c to `addr` (the gateway).
fn grpc_client(addr: SocketAddr) -> GrpcClient {
    let http = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let origin = format!("http://{addr}").parse().unwrap();
    tonic::client::Grpc::with_origin(http, origin)
}

async fn unary(
    client: &mut GrpcClient,
    req: tonic::Request<Echo>,
) -> Result<tonic::Response<Echo>, Status> {
    client.ready().await.expect("client ready");
    client
        .unary(
            req,
            PathAndQuery::from_static("/test.Echo/Unary"),
            ProstCodec::<Echo, Echo>::default(),
        )
        .await
}

fn echo(text: &str, count: u32) -> Echo {
    Echo {
        text: text.to_string(),
        count,
    }
}

fn h2c_gateway_config(target: SocketAddr) -> gatewise::config::Config {
    let mut c = config(&[target]);
    upstream_of(&mut c).protocol = UpstreamProtocol::H2c;
    c
}

#[tokio::test]
async fn unary_calls_pass_with_status_metadata_and_trailers_untouched() {
    let (up, _task) = grpc_upstream(Duration::ZERO).await;
    let mut c = h2c_gateway_config(up);
    c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    let gw = support::start(c).await;
    let mut client = grpc_client(gw.addr);

    let resp = unary(&mut client, tonic::Request::new(echo("hello", 41)))
        .await
        .expect("OK");
    assert_eq!(resp.metadata().get("x-upstream").unwrap(), "yes");
    assert_eq!(resp.into_inner(), echo("echo hello", 42));
    let line = gw.next_log();
    assert_eq!(line["grpc_status"], 0, "{line}");
    assert_eq!(line["protocol"], "h2", "{line}");
    assert_eq!(line["upstream_protocol"], "h2", "{line}");

    // The upstream's own error, with its trailer metadata, reaches the client as sent.
    let err = unary(&mut client, tonic::Request::new(echo("fail", 0)))
        .await
        .expect_err("NOT_FOUND");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "no such thing");
    assert_eq!(err.metadata().get("x-detail").unwrap(), "from-upstream");
    let line = gw.next_log();
    assert_eq!(line["grpc_status"], 5);

    // Counted by the protocol of each side and by grpc-status.
    let route = line["route"].as_str().unwrap().to_string();
    let metrics = format!("http://{}/metrics", gw.admin.unwrap());
    let (_, body) = support::get(&support::client(), &metrics).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    for want in [
        format!("gatewise_requests_by_protocol_total{{route=\"{route}\",client=\"h2\",upstream=\"h2\"}} 2"),
        format!("gatewise_grpc_responses_total{{route=\"{route}\",grpc_status=\"0\"}} 1"),
        format!("gatewise_grpc_responses_total{{route=\"{route}\",grpc_status=\"5\"}} 1"),
    ] {
        assert!(text.contains(&want), "missing {want} in\n{text}");
    }
}

#[tokio::test]
async fn server_streaming_calls_deliver_every_message_and_the_trailers() {
    let (up, _task) = grpc_upstream(Duration::ZERO).await;
    let gw = support::start(h2c_gateway_config(up)).await;
    let mut client = grpc_client(gw.addr);
    client.ready().await.unwrap();
    let resp = client
        .server_streaming(
            tonic::Request::new(echo("tick", 25)),
            PathAndQuery::from_static("/test.Echo/Stream"),
            ProstCodec::<Echo, Echo>::default(),
        )
        .await
        .expect("stream starts");
    let mut stream = resp.into_inner();
    let mut got = Vec::new();
    while let Some(msg) = stream.message().await.expect("message") {
        got.push(msg);
    }
    let want: Vec<Echo> = (0..25).map(|i| echo(&format!("tick #{i}"), i)).collect();
    assert_eq!(got, want);
    // The stream ended with the upstream's trailers (grpc-status 0), not a cut.
    stream.trailers().await.expect("trailers");
    assert_eq!(gw.next_log()["grpc_status"], 0);
}

#[tokio::test]
async fn an_upstream_that_is_down_is_unavailable_with_the_cause_in_the_message() {
    let down = upstream::closed_port().await;
    let mut c = h2c_gateway_config(down);
    // No outage hold: the refusal is answered at once.
    upstream_of(&mut c).outage_hold = Duration::ZERO;
    let gw = support::start(c).await;
    let mut client = grpc_client(gw.addr);
    let err = unary(&mut client, tonic::Request::new(echo("hi", 0)))
        .await
        .expect_err("UNAVAILABLE");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().starts_with("connection_refused"), "{err:?}");
    // Proxy-Status is still there for whoever reads headers.
    let ps = err.metadata().get("proxy-status").expect("proxy-status");
    assert!(ps
        .to_str()
        .unwrap()
        .starts_with("gatewise; error=connection_refused"));
    let line = gw.next_log();
    assert_eq!(line["grpc_status"], 14, "{line}");
    assert_eq!(line["cause"], "connection_refused", "{line}");
}

#[tokio::test]
async fn grpc_timeout_shortens_the_deadline_and_ends_in_deadline_exceeded() {
    let (up, _task) = grpc_upstream(Duration::from_secs(5)).await;
    let mut c = h2c_gateway_config(up);
    route_of(&mut c).timeout = Duration::from_secs(30);
    route_of(&mut c).per_try_timeout = Duration::from_secs(30);
    let gw = support::start(c).await;
    let mut client = grpc_client(gw.addr);
    let mut req = tonic::Request::new(echo("slow", 0));
    req.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = unary(&mut client, req)
        .await
        .expect_err("DEADLINE_EXCEEDED");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().starts_with("http_response_timeout"),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(gw.next_log()["grpc_status"], 4);
}
