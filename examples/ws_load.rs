//! The load client of `scripts/bench-ws` (issue 4, "Performance"): drives a running daemon's
//! HTTP + WebSocket bridge on loopback and prints the figures as one JSON object.
//!
//! 1. Creates a session with `--tracks` armed tracks (multitrack API) and starts recording, so
//!    position pushes flow.
//! 2. Baseline: the daemon's CPU while recording with no WebSocket client.
//! 3. WebSocket: `--clients` clients subscribed to `position` + `meters` at `--meter-rate` Hz
//!    for `--seconds`: the daemon's CPU (% of one core, from `/proc/PID/stat` utime+stime),
//!    its RSS (steady and peak) and the pushes each client received per second.
//! 4. HTTP: `GET /api/v1/multitrack/session/:id` from `--concurrency` keep-alive connections,
//!    `--requests` in all: latency percentiles and throughput.
//! 5. Stops the recording.
//!
//! Linux only (it reads `/proc`). A bench tool, not part of the daemon: errors abort with a
//! message.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Load client for the overdub bridge; prints JSON figures.
#[derive(Parser, Debug)]
struct Args {
    /// The bridge's address (`http.listen` of the daemon).
    #[arg(long)]
    addr: SocketAddr,
    /// The daemon's process id, for CPU and RSS from /proc.
    #[arg(long)]
    pid: u32,
    /// Tracks of the bench session (all armed).
    #[arg(long, default_value_t = 4)]
    tracks: usize,
    /// Seconds of the no-client baseline.
    #[arg(long, default_value_t = 10)]
    baseline_seconds: u64,
    /// WebSocket clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Seconds the WebSocket clients are measured.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// `meterRateHz` each client asks for.
    #[arg(long, default_value_t = 20.0)]
    meter_rate: f64,
    /// Concurrent keep-alive HTTP connections.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// HTTP requests in all (beyond one warm-up request per connection).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Requests per second, all connections together, of the paced HTTP phase (each
    /// connection sends on a fixed schedule; latency counts from the scheduled time).
    #[arg(long, default_value_t = 2_000.0)]
    paced_rate: f64,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let proc = Proc::new(args.pid)?;
    let session = create_and_record(args.addr, args.tracks).await?;

    let idle = proc
        .window(Duration::from_secs(args.baseline_seconds))
        .await?;
    let ws = websocket_phase(&args, &session, &proc).await?;
    let ws_rss_max = ws["rssMaxKiB"].as_u64().unwrap_or(0);
    let http = http_phase(&args, &session, None, &proc).await?;
    let paced = http_phase(&args, &session, Some(args.paced_rate), &proc).await?;

    let mut stop = HttpConn::connect(args.addr).await?;
    let (status, _) = stop
        .request(
            "POST",
            &format!("/api/v1/multitrack/session/{session}/stop"),
        )
        .await?;
    if status != 200 {
        return Err(format!("stop answered {status}").into());
    }
    let report = json!({
        "sessionId": session,
        "tracks": args.tracks,
        "baseline": {
            "seconds": args.baseline_seconds,
            "cpuPercent": round2(idle.cpu_percent),
            "rssKiB": idle.rss_last_kib,
        },
        "websocket": ws,
        "http": http,
        "httpPaced": paced,
        // The kernel updates VmHWM lazily: it may lag the RSS sampled once a second.
        "peakRssKiB": proc.status_kib("VmHWM")?.max(idle.rss_max_kib).max(ws_rss_max),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Creates the bench session over the multitrack API and starts recording; its id.
async fn create_and_record(addr: SocketAddr, tracks: usize) -> Result<String, Error> {
    let mut conn = HttpConn::connect(addr).await?;
    let body = json!({
        "projectId": "bench",
        "userId": "bench",
        "tracks": (0..tracks).map(|i| json!({"name": format!("bench {}", i + 1), "armed": true})).collect::<Vec<_>>(),
    });
    let (status, answer) = conn
        .request_body("POST", "/api/v1/multitrack/session", &body.to_string())
        .await?;
    let answer: Value = serde_json::from_slice(&answer)?;
    let id = answer["session"]["sessionId"]
        .as_str()
        .ok_or_else(|| format!("create answered {status}: {answer}"))?
        .to_string();
    let (status, answer) = conn
        .request("POST", &format!("/api/v1/multitrack/session/{id}/start"))
        .await?;
    if status != 200 {
        return Err(format!(
            "start answered {status}: {}",
            String::from_utf8_lossy(&answer)
        )
        .into());
    }
    Ok(id)
}

/// Pushes one client received in the measured window.
#[derive(Default, Clone, Copy)]
struct Received {
    position: u64,
    meters: u64,
    other: u64,
}

async fn websocket_phase(args: &Args, session: &str, proc: &Proc) -> Result<Value, Error> {
    let before_kib = proc.status_kib("VmRSS")?;
    let start = Arc::new(Barrier::new(args.clients + 1));
    let window = Duration::from_secs(args.seconds);
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let (addr, session, rate, start) = (
            args.addr,
            session.to_string(),
            args.meter_rate,
            start.clone(),
        );
        clients.push(tokio::spawn(async move {
            ws_client(addr, &session, rate, start, window).await
        }));
    }
    // Every client is connected and subscribed once the barrier opens.
    start.wait().await;
    let measured = proc.window(window).await?;
    let mut per_client = Vec::with_capacity(args.clients);
    for client in clients {
        per_client.push(client.await??);
    }
    let seconds = window.as_secs_f64();
    let rates = |pick: fn(&Received) -> u64| {
        let rates: Vec<f64> = per_client
            .iter()
            .map(|r| pick(r) as f64 / seconds)
            .collect();
        let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        json!({"meanPerSecond": round2(mean), "minPerSecond": round2(min)})
    };
    Ok(json!({
        "clients": args.clients,
        "seconds": args.seconds,
        "meterRateHz": args.meter_rate,
        "cpuPercent": round2(measured.cpu_percent),
        "rssBeforeKiB": before_kib,
        "rssSteadyKiB": measured.rss_last_kib,
        "rssMaxKiB": measured.rss_max_kib,
        "positionPushes": rates(|r| r.position),
        "meterPushes": rates(|r| r.meters),
        "otherFrames": per_client.iter().map(|r| r.other).sum::<u64>(),
        "pushesTotal": per_client.iter().map(|r| r.position + r.meters).sum::<u64>(),
    }))
}

/// One WebSocket client: subscribes, waits for the others, then counts pushes for `window`.
async fn ws_client(
    addr: SocketAddr,
    session: &str,
    rate: f64,
    start: Arc<Barrier>,
    window: Duration,
) -> Result<Received, Error> {
    let subscribed = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
        let subscribe = json!({
            "type": "subscribe", "id": "sub", "topics": ["position", "meters"],
            "meterRateHz": rate, "sessionId": session,
        });
        ws.send(Message::Text(subscribe.to_string().into())).await?;
        loop {
            match ws
                .next()
                .await
                .ok_or("closed before the subscription reply")??
            {
                Message::Text(text) if text.contains("\"reply\"") => return Ok::<_, Error>(ws),
                Message::Text(text) if text.contains("\"error\"") => {
                    return Err(format!("subscribe refused: {text}").into())
                }
                _ => {}
            }
        }
    }
    .await;
    // Waits even on failure, so that the others are not left at the barrier.
    start.wait().await;
    let mut ws = subscribed?;
    let end = tokio::time::Instant::now() + window;
    let mut received = Received::default();
    while let Ok(frame) = tokio::time::timeout_at(end, ws.next()).await {
        match frame.ok_or("the daemon closed a client")?? {
            Message::Text(text) if text.contains("\"type\":\"position\"") => received.position += 1,
            Message::Text(text) if text.contains("\"type\":\"meters\"") => received.meters += 1,
            _ => received.other += 1,
        }
    }
    let _ = ws.close(None).await;
    Ok(received)
}

/// `GET /session/:id` from `args.concurrency` keep-alive connections, `args.requests` in all:
/// back to back (closed loop: each connection sends when answered, so the latency is bound by
/// the throughput), or `paced` at that many requests per second in all (open loop: each
/// connection keeps its schedule, and a late answer counts from when the request was due).
async fn http_phase(
    args: &Args,
    session: &str,
    paced: Option<f64>,
    proc: &Proc,
) -> Result<Value, Error> {
    let interval =
        paced.map(|rate| Duration::from_secs_f64(args.concurrency as f64 / rate.max(1.0)));
    let path: Arc<str> = format!("/api/v1/multitrack/session/{session}").into();
    let next = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(Barrier::new(args.concurrency + 1));
    let mut workers = Vec::with_capacity(args.concurrency);
    for worker in 0..args.concurrency {
        // Paced connections start spread over one interval, not all at once.
        let offset = interval.map_or(Duration::ZERO, |i| {
            i * worker as u32 / args.concurrency as u32
        });
        let (addr, path, next, ready, total) = (
            args.addr,
            path.clone(),
            next.clone(),
            ready.clone(),
            args.requests,
        );
        workers.push(tokio::spawn(async move {
            // Warm-up: the connection is open and the first request served before timing.
            let warm = async {
                let mut conn = HttpConn::connect(addr).await?;
                conn.expect_ok("GET", &path).await?;
                Ok::<_, Error>(conn)
            }
            .await;
            // Waits even on failure, so that the others are not left at the barrier.
            ready.wait().await;
            let mut conn = warm?;
            let mut latencies = Vec::new();
            let mut due = Instant::now() + offset;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sent = match interval {
                    Some(interval) => {
                        tokio::time::sleep_until(due.into()).await;
                        let sent = due;
                        due += interval;
                        sent
                    }
                    None => Instant::now(),
                };
                conn.expect_ok("GET", &path).await?;
                latencies.push(sent.elapsed());
            }
            Ok::<_, Error>(latencies)
        }));
    }
    ready.wait().await;
    let started = Instant::now();
    let client = Proc::new(std::process::id())?;
    let ticks_before = proc.cpu_ticks()?;
    let client_ticks_before = client.cpu_ticks()?;
    let mut latencies = Vec::with_capacity(args.requests);
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let daemon_seconds = (proc.cpu_ticks()? - ticks_before) as f64 / proc.ticks_per_second;
    let client_seconds =
        (client.cpu_ticks()? - client_ticks_before) as f64 / client.ticks_per_second;
    let count = latencies.len().max(1) as f64;
    let per_request = |seconds: f64| round2(1e6 * seconds / count);
    latencies.sort();
    let ms = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        round2(latencies[i].as_secs_f64() * 1e3)
    };
    Ok(json!({
        "path": "/api/v1/multitrack/session/:id",
        "concurrency": args.concurrency,
        "pacedRate": paced,
        "requests": latencies.len(),
        "requestsPerSecond": round2(latencies.len() as f64 / elapsed),
        // The daemon's CPU while the requests ran (all its threads, the recording included),
        // per request: robust where latency depends on what else the machine runs.
        "daemonCpuPercent": round2(100.0 * daemon_seconds / elapsed),
        "daemonCpuMicrosPerRequest": per_request(daemon_seconds),
        // The load client's own CPU per request: on a shared machine it competes with the
        // daemon, and back to back the two together bound the throughput.
        "clientCpuMicrosPerRequest": per_request(client_seconds),
        "latencyMs": {"p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99), "max": ms(1.0)},
    }))
}

/// A minimal HTTP/1.1 keep-alive client: one request at a time, `Content-Length` bodies.
struct HttpConn {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl HttpConn {
    async fn connect(addr: SocketAddr) -> Result<HttpConn, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buffer: Vec::with_capacity(8192),
        })
    }

    async fn expect_ok(&mut self, method: &str, path: &str) -> Result<(), Error> {
        let (status, body) = self.request(method, path).await?;
        if status != 200 {
            return Err(format!(
                "{method} {path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            )
            .into());
        }
        Ok(())
    }

    async fn request(&mut self, method: &str, path: &str) -> Result<(u16, Vec<u8>), Error> {
        self.request_body(method, path, "").await
    }

    async fn request_body(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>), Error> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        self.stream.write_all(head.as_bytes()).await?;
        self.read_response().await
    }

    /// Reads one response: status and body (the buffer keeps anything after it).
    async fn read_response(&mut self) -> Result<(u16, Vec<u8>), Error> {
        let header_end = loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buffer[..header_end])?.to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        let headers: BTreeMap<String, String> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .get("content-length")
            .ok_or_else(|| format!("no Content-Length in {head:?}"))?
            .parse()?;
        while self.buffer.len() < header_end + length {
            self.fill().await?;
        }
        let body = self.buffer[header_end..header_end + length].to_vec();
        self.buffer.drain(..header_end + length);
        Ok((status, body))
    }

    async fn fill(&mut self) -> Result<(), Error> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("the daemon closed an HTTP connection".into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// The daemon's process in /proc.
struct Proc {
    pid: u32,
    ticks_per_second: f64,
}

/// CPU and RSS over one measured window.
struct Window {
    cpu_percent: f64,
    rss_last_kib: u64,
    rss_max_kib: u64,
}

impl Proc {
    fn new(pid: u32) -> Result<Proc, Error> {
        // SAFETY: sysconf has no preconditions; it only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks <= 0 {
            return Err("sysconf(_SC_CLK_TCK) failed".into());
        }
        let proc = Proc {
            pid,
            ticks_per_second: ticks as f64,
        };
        proc.cpu_ticks()?;
        Ok(proc)
    }

    /// utime + stime of the whole process (all threads), in clock ticks.
    fn cpu_ticks(&self) -> Result<u64, Error> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name (which may hold spaces) start at field 3 (state).
        let rest = stat.rsplit_once(')').ok_or("unreadable /proc/PID/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> Result<u64, Error> {
            Ok(fields.get(n - 3).ok_or("short /proc/PID/stat")?.parse()?)
        };
        Ok(field(14)? + field(15)?)
    }

    /// A `Vm*` line of /proc/PID/status, in KiB.
    fn status_kib(&self, key: &str) -> Result<u64, Error> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
            .and_then(|v| v.split_whitespace().next())
            .ok_or_else(|| format!("no {key} in /proc/PID/status"))?;
        Ok(value.parse()?)
    }

    /// CPU % of one core over `length`, sampling RSS once a second.
    async fn window(&self, length: Duration) -> Result<Window, Error> {
        let (t0, w0) = (self.cpu_ticks()?, Instant::now());
        let end = tokio::time::Instant::now() + length;
        let mut rss_max_kib = self.status_kib("VmRSS")?;
        let mut rss_last_kib = rss_max_kib;
        while tokio::time::Instant::now() < end {
            tokio::time::sleep_until(end.min(tokio::time::Instant::now() + Duration::from_secs(1)))
                .await;
            rss_last_kib = self.status_kib("VmRSS")?;
            rss_max_kib = rss_max_kib.max(rss_last_kib);
        }
        let (t1, wall) = (self.cpu_ticks()?, w0.elapsed().as_secs_f64());
        Ok(Window {
            cpu_percent: 100.0 * (t1 - t0) as f64 / self.ticks_per_second / wall,
            rss_last_kib,
            rss_max_kib,
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
