//! A minimal OTLP/HTTP receiver for tests: accepts `POST /v1/traces` with
//! protobuf bodies (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`, the
//! default) or JSON ones (`http/json`) and keeps every span.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One received span.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the process that sent it.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// Trace ids of the spans it links to.
    pub link_trace_ids: Vec<String>,
}

pub struct OtlpReceiver {
    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` should be.
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Bodies received in each encoding.
    bodies: Arc<Mutex<HashMap<Protocol, usize>>>,
}

fn string_attr(attrs: &Value, key: &str) -> Option<String> {
    attrs.as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
        .map(str::to_owned)
}

fn parse(body: &Value) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in body["resourceSpans"].as_array().into_iter().flatten() {
        let service =
            string_attr(&rs["resource"]["attributes"], "service.name").unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_lowercase();
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    link_trace_ids: s["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l["traceId"].as_str().map(str::to_lowercase))
                        .collect(),
                });
            }
        }
    }
    out
}

/// Spans of an `ExportTraceServiceRequest` in protobuf.
fn parse_protobuf(body: &[u8]) -> Option<Vec<ReceivedSpan>> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    let req = ExportTraceServiceRequest::decode(body).ok()?;
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                Any::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: s.name.to_lowercase(),
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    link_trace_ids: s.links.iter().map(|l| hex::encode(&l.trace_id)).collect(),
                });
            }
        }
    }
    Some(out)
}

/// The protocol a receiver's [`OtlpReceiver::env`] asks the services to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Protobuf,
    Json,
}

impl OtlpReceiver {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let bodies: Arc<Mutex<HashMap<Protocol, usize>>> = Arc::default();
        let store = spans.clone();
        let counts = bodies.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (store, counts) = (store.clone(), counts.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut reader = BufReader::new(read);
                    // One request after another on a kept-alive connection.
                    loop {
                        let mut length = 0usize;
                        let mut line = String::new();
                        let mut first = true;
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" && !first {
                                break;
                            }
                            first = false;
                            if let Some((k, v)) = line.split_once(':') {
                                if k.eq_ignore_ascii_case("content-length") {
                                    length = v.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0u8; length];
                        if reader.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let (protocol, spans) = match serde_json::from_slice::<Value>(&body) {
                            Ok(v) => (Protocol::Json, Some(parse(&v))),
                            Err(_) => (Protocol::Protobuf, parse_protobuf(&body)),
                        };
                        if spans.is_some() {
                            if let Ok(mut c) = counts.lock() {
                                *c.entry(protocol).or_default() += 1;
                            }
                        }
                        if let (Some(spans), Ok(mut s)) = (spans, store.lock()) {
                            s.extend(spans);
                        }
                        // An empty body is a valid (empty) response in both encodings.
                        let reply = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self {
            endpoint,
            spans,
            bodies,
        })
    }

    /// How many bodies arrived in `protocol`.
    pub fn bodies(&self, protocol: Protocol) -> usize {
        self.bodies
            .lock()
            .map(|c| c.get(&protocol).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The environment that points a service at this receiver.
    pub fn env(&self, protocol: Protocol) -> Vec<(&'static str, String)> {
        let protocol = match protocol {
            Protocol::Protobuf => "http/protobuf",
            Protocol::Json => "http/json",
        };
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ]
    }
}
