//! Contention, side by side: this crate, a 10 ms poller and the Python
//! package, each in peer processes of its own (see `peer.rs` and
//! `scripts/bench_peer.py`), against the same server in the same run.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::peer::{COLLECTION, DB, PEER, URI};
use crate::{ms, percentile, Result};

/// What runs the lock in a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ours,
    OursUnfair,
    Poller,
    Python,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ours => "mongolock",
            Kind::OursUnfair => "mongolock fair(false)",
            Kind::Poller => "10 ms poller",
            Kind::Python => "Python package",
        }
    }

    fn slug(self) -> String {
        self.name()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    }
}

/// A peer process and its line protocol.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    async fn spawn(kind: Kind, env: &Env, collection: &str) -> Result<Self> {
        let mut command = match kind {
            Kind::Python => {
                let python = env.python.as_deref().ok_or("no Python")?;
                let mut command = Command::new(python);
                command
                    .arg(mongolock_suite::workspace_root().join("scripts/bench_peer.py"))
                    .args([&env.uri, &env.db, collection]);
                command
            }
            Kind::Ours | Kind::OursUnfair | Kind::Poller => {
                let peer = match kind {
                    Kind::Ours => "ours",
                    Kind::OursUnfair => "ours-unfair",
                    _ => "poller",
                };
                let mut command = Command::new(std::env::current_exe()?);
                command
                    .env(PEER, peer)
                    .env(URI, &env.uri)
                    .env(DB, &env.db)
                    .env(COLLECTION, collection);
                command
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut peer = Self {
            child,
            stdin,
            lines,
        };
        peer.expect("READY").await?;
        Ok(peer)
    }

    async fn send(&mut self, line: &str) -> Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The words after `prefix` on the next line that starts with it.
    async fn expect(&mut self, prefix: &str) -> Result<Vec<String>> {
        loop {
            let line = self
                .lines
                .next_line()
                .await?
                .ok_or_else(|| format!("peer exited before {prefix}"))?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.split_whitespace().map(str::to_owned).collect());
            }
            if line.starts_with("FAILED") {
                return Err(format!("peer: {line}").into());
            }
        }
    }

    /// What its client sent and was sent so far.
    async fn tally(&mut self) -> Result<Tally> {
        self.send("COMMANDS").await?;
        let words = self.expect("COMMANDS").await?;
        let number =
            |i: usize| -> Result<u64> { Ok(words.get(i).ok_or("COMMANDS: four counts")?.parse()?) };
        Ok(Tally {
            commands: number(0)?,
            empty: number(1)?,
            writes: number(2)?,
            events: number(3)?,
        })
    }

    async fn quit(mut self) -> Result<()> {
        self.send("QUIT").await?;
        self.child.wait().await?;
        Ok(())
    }
}

/// Where the peers connect.
pub struct Env {
    pub uri: String,
    pub db: String,
    /// The Python with the Python package installed, if there is one.
    pub python: Option<String>,
    /// The server's process, when it is the local one (to read its CPU time).
    pub server_pid: Option<u32>,
}

impl Env {
    /// CPU time the server's process has used so far (Linux `/proc`), if it
    /// is local.
    fn server_cpu(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.server_pid?)).ok()?;
        // Fields after the command name, which is in parentheses: utime and
        // stime are the 12th and 13th, in clock ticks (100 per second).
        let rest = stat.rsplit_once(')')?.1;
        let mut fields = rest.split_whitespace().skip(11);
        let ticks: u64 =
            fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
        Some(Duration::from_millis(ticks * 10))
    }
}

/// What peers' clients sent and were sent, as their command monitors
/// count it: commands (monitoring aside), of them the `getMore`s that came
/// back empty, the writes, and the change events delivered.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    commands: u64,
    empty: u64,
    writes: u64,
    events: u64,
}

impl std::ops::Add for Tally {
    type Output = Tally;
    fn add(self, other: Tally) -> Tally {
        Tally {
            commands: self.commands + other.commands,
            empty: self.empty + other.empty,
            writes: self.writes + other.writes,
            events: self.events + other.events,
        }
    }
}

impl Tally {
    /// What happened since `before`, per operation (`operations` of them).
    fn per(self, before: Tally, operations: f64) -> Costs {
        let since = |now: u64, then: u64| now.saturating_sub(then) as f64 / operations.max(1.0);
        Costs {
            commands: since(self.commands, before.commands),
            eventful: since(self.commands - self.empty, before.commands - before.empty),
            writes: since(self.writes, before.writes),
            events: since(self.events, before.events),
        }
    }
}

/// Per operation: server commands, the same without empty `getMore`s (what
/// mongod, whose `getMore` waits for a matching event, would be sent),
/// writes, and change events delivered.
#[derive(Debug, Clone, Copy)]
pub struct Costs {
    pub commands: f64,
    pub eventful: f64,
    pub writes: f64,
    pub events: f64,
}

impl Costs {
    /// The commands cell of a row.
    fn commands_cell(&self) -> String {
        format!(
            "{:.1} ({:.1} without empty getMores)",
            self.commands, self.eventful
        )
    }

    /// The writes and events cell of a row.
    fn writes_cell(&self) -> String {
        format!("{:.1} / {:.1}", self.writes, self.events)
    }
}

/// One-worker cycle: acquisitions+releases per second by one worker.
pub async fn cycle(kind: Kind, env: &Env) -> Result<Contended> {
    contend(kind, env, 1, 1).await
}

/// Handoff to `waiters` waiters in `processes` other processes: from the
/// start of the holder's release to the first waiter's acquisition, by the
/// machine's clock shared by all processes.
///
/// Also counts the commands every peer sends from just before the release
/// until the last waiter has taken and released the lock, per handoff:
/// each round hands the lock on `waiters` times (the last release has no
/// waiter to go to, and is counted with the rest).
pub async fn handoff(kind: Kind, env: &Env, waiters: usize, processes: usize) -> Result<Handoffs> {
    const ROUNDS: usize = 15;
    let collection = format!("handoff_{}_{waiters}_{processes}", kind.slug());
    let mut holder = Peer::spawn(kind, env, &collection).await?;
    let mut peers = Vec::new();
    for _ in 0..processes {
        peers.push(Peer::spawn(kind, env, &collection).await?);
    }
    let mut samples = Vec::new();
    let mut counted = (Tally::default(), Tally::default());
    for round in 0..ROUNDS {
        let key = format!("k{round}");
        holder.send(&format!("HOLD {key}")).await?;
        holder.expect("HELD").await?;
        for waiter in 0..waiters {
            peers[waiter % processes]
                .send(&format!("WAIT {key}"))
                .await?;
        }
        // Let every waiter find the lock taken and settle; a random hold
        // keeps the release out of step with any polling period.
        let hold = 300 + rand::random::<u64>() % 100;
        tokio::time::sleep(Duration::from_millis(hold)).await;
        let before = total_tally(&mut holder, &mut peers).await?;
        holder.send(&format!("RELEASE {key}")).await?;
        let released: u128 = holder.expect("RELEASED").await?[1].parse()?;
        let mut first = u128::MAX;
        for (p, peer) in peers.iter_mut().enumerate() {
            // Its waiters' lines, in whatever order they interleave.
            let mine = (waiters + processes - 1 - p) / processes;
            let (mut acquired, mut done) = (0, 0);
            while acquired < mine || done < mine {
                let words = peer.expect("").await?;
                match words.first().map(String::as_str) {
                    Some("ACQUIRED") => {
                        acquired += 1;
                        first = first.min(words.get(2).ok_or("ACQUIRED key at")?.parse()?);
                    }
                    Some("DONE") => done += 1,
                    Some("FAILED") => return Err(format!("peer: {}", words.join(" ")).into()),
                    _ => {}
                }
            }
        }
        samples.push(Duration::from_micros(first.saturating_sub(released) as u64));
        let after = total_tally(&mut holder, &mut peers).await?;
        counted = (counted.0 + before, counted.1 + after);
    }
    holder.quit().await?;
    for peer in peers {
        peer.quit().await?;
    }
    let handoffs = (ROUNDS * waiters) as f64;
    Ok(Handoffs {
        samples,
        costs: counted.1.per(counted.0, handoffs),
    })
}

/// Handoff latencies, and what a handoff costs.
pub struct Handoffs {
    pub samples: Vec<Duration>,
    pub costs: Costs,
}

/// What all of `holder` and `peers` sent and were sent so far.
async fn total_tally(holder: &mut Peer, peers: &mut [Peer]) -> Result<Tally> {
    let mut total = holder.tally().await?;
    for peer in peers {
        total = total + peer.tally().await?;
    }
    Ok(total)
}

/// `workers` workers on one key, spread over `processes` processes.
pub struct Contended {
    pub rate: f64,
    /// Acquisitions/s by another worker than the previous holder: the rate
    /// at which the lock changes hands.
    pub handoff_rate: f64,
    /// The server process's CPU time per acquisition, when it is local.
    pub server_cpu: Option<Duration>,
    pub latencies: Vec<Duration>,
    pub costs: Costs,
}

pub async fn contend(kind: Kind, env: &Env, workers: usize, processes: usize) -> Result<Contended> {
    let window = Duration::from_secs(4);
    let collection = format!("contend_{}_{workers}_{processes}", kind.slug());
    let mut peers = Vec::new();
    for _ in 0..processes {
        peers.push(Peer::spawn(kind, env, &collection).await?);
    }
    let mut before = Tally::default();
    for (p, peer) in peers.iter_mut().enumerate() {
        let tasks = workers / processes + usize::from(p < workers % processes);
        before = before + peer.tally().await?;
        peer.send(&format!("CONTEND w {tasks} {}", window.as_secs_f64()))
            .await?;
        peer.expect("SET").await?;
    }
    let cpu_before = env.server_cpu();
    for peer in &mut peers {
        peer.send("GO").await?;
    }
    let mut latencies = Vec::new();
    let mut order = Vec::new();
    let mut cpu_after = None;
    for (p, peer) in peers.iter_mut().enumerate() {
        let words = peer.expect("LATENCIES").await?;
        // Once the first peer has answered, the window is over (all started
        // together): the server's time is read then, before the other
        // peers' replies and the command counts.
        cpu_after = cpu_after.or_else(|| env.server_cpu());
        if let Some(list) = words.get(1) {
            for sample in list.split(',') {
                let mut parts = sample.split(':');
                let mut next = || parts.next().ok_or("LATENCIES: us:at:worker");
                latencies.push(Duration::from_micros(next()?.parse()?));
                let at: u128 = next()?.parse()?;
                let worker: usize = next()?.parse()?;
                order.push((at, (p, worker)));
            }
        }
    }
    // Acquisitions in the order they happened (one machine, one clock):
    // those by another worker than the one before are handoffs; the rest
    // are a worker taking the lock again after its own release.
    order.sort_unstable();
    let handoffs = order.windows(2).filter(|w| w[0].1 != w[1].1).count();
    let mut after = Tally::default();
    for peer in &mut peers {
        after = after + peer.tally().await?;
    }
    for peer in peers {
        peer.quit().await?;
    }
    let acquisitions = latencies.len().max(1) as f64;
    Ok(Contended {
        rate: latencies.len() as f64 / window.as_secs_f64(),
        handoff_rate: handoffs as f64 / window.as_secs_f64(),
        server_cpu: cpu_before
            .zip(cpu_after)
            .map(|(before, after)| (after.saturating_sub(before)).div_f64(acquisitions)),
        costs: after.per(before, acquisitions),
        latencies,
    })
}

/// Commands per second per waiter, with `waiters` waiters (in one process)
/// on a key held by another.
pub async fn idle(kind: Kind, env: &Env, waiters: usize) -> Result<f64> {
    let window = Duration::from_secs(5);
    let collection = format!("idle_{}", kind.slug());
    let mut holder = Peer::spawn(kind, env, &collection).await?;
    holder.send("HOLD idle").await?;
    holder.expect("HELD").await?;
    let mut peer = Peer::spawn(kind, env, &collection).await?;
    peer.send(&format!("IDLE idle {waiters} {}", window.as_secs_f64()))
        .await?;
    let commands: f64 = peer.expect("IDLE").await?[0].parse()?;
    holder.send("RELEASE idle").await?;
    holder.expect("RELEASED").await?;
    holder.quit().await?;
    // Python's waiters time out by themselves; ours are aborted.
    peer.quit().await?;
    Ok(commands / window.as_secs_f64() / waiters as f64)
}

/// The poller's column in the comparison table.
const POLLER: usize = 2;

/// One row of the comparison table: a figure per lock, the target, and
/// whether mongolock meets it.
fn show(figure: &str, cells: &[String], target: &str, met: Option<bool>) {
    let met = match met {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    println!("| {figure} | {} | {target} | {met} |", cells.join(" | "));
}

/// The server's CPU time per acquisition, for each lock, and the rate at
/// which that would keep its one core busy: a run near that rate is bound
/// by the server. Nothing is printed without a local server.
fn server_cpu_row(place: &str, results: &[Contended]) {
    let Some(cpu) = results
        .iter()
        .map(|r| r.server_cpu)
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    show(
        &format!("{place}, server CPU per acquisition (the rate that fills one core)"),
        &cpu.iter()
            .map(|c| format!("{} ({:.0}/s)", ms(*c), 1.0 / c.as_secs_f64().max(1e-9)))
            .collect::<Vec<_>>(),
        "-",
        None,
    );
}

/// The rows of one contention run (`results`, one per lock, mongolock
/// first): throughput, how often the lock changed hands, acquire latency
/// against the FIFO bound N x `our_cycle`, and commands per acquisition.
fn contended_rows(
    place: &str,
    workers: usize,
    results: &mut [Contended],
    one: f64,
    our_cycle: Duration,
) {
    let rates: Vec<f64> = results.iter().map(|r| r.rate).collect();
    show(
        &format!("{place}, acquisitions/s"),
        &rates.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>(),
        &format!(
            "- (counts a worker taking the lock again; {:.2}x poller, {:.2}x one worker)",
            rates[0] / rates[POLLER].max(1e-9),
            rates[0] / one.max(1e-9)
        ),
        None,
    );
    let handoffs: Vec<f64> = results.iter().map(|r| r.handoff_rate).collect();
    show(
        &format!("{place}, handoffs/s (taken by another worker than the last holder)"),
        &results
            .iter()
            .map(|r| {
                format!(
                    "{:.1} ({:.0}%)",
                    r.handoff_rate,
                    100.0 * r.handoff_rate / r.rate.max(1e-9)
                )
            })
            .collect::<Vec<_>>(),
        &format!(
            ">= 1.5x poller's ({:.2}x)",
            handoffs[0] / handoffs[POLLER].max(1e-9)
        ),
        Some(handoffs[0] >= 1.5 * handoffs[POLLER]),
    );
    server_cpu_row(place, results);
    let bound = our_cycle * workers as u32;
    let mut cells = Vec::new();
    let mut p99s = Vec::new();
    for result in results.iter_mut() {
        let (p50, p99) = (
            percentile(&mut result.latencies, 0.5),
            percentile(&mut result.latencies, 0.99),
        );
        let worst = percentile(&mut result.latencies, 1.0);
        p99s.push(p99);
        cells.push(format!(
            "{} / {} (worst {:.1}x N x cycle)",
            ms(p50),
            ms(p99),
            worst.as_secs_f64() / bound.as_secs_f64()
        ));
    }
    show(
        &format!("{place}, acquire p50 / p99"),
        &cells,
        &format!(
            "p99 <= 0.5x poller's ({:.2}x); FIFO bound 2x N x cycle = {} ({:.2}x)",
            p99s[0].as_secs_f64() / p99s[POLLER].as_secs_f64().max(1e-9),
            ms(bound * 2),
            p99s[0].as_secs_f64() / (bound * 2).as_secs_f64()
        ),
        Some(p99s[0].as_secs_f64() <= 0.5 * p99s[POLLER].as_secs_f64()),
    );
    let costs: Vec<&Costs> = results.iter().map(|r| &r.costs).collect();
    costs_rows(&format!("{place}, per acquisition"), &costs);
}

/// The rows of what an operation costs, one cell per lock: server commands
/// (with the target of earlier work: at most 3 as mongod would be sent
/// them), and writes and change events.
fn costs_rows(what: &str, costs: &[&Costs]) {
    show(
        &format!("{what}: server commands"),
        &costs.iter().map(|c| c.commands_cell()).collect::<Vec<_>>(),
        "<= 3 (without empty getMores, as on mongod)",
        Some(costs[0].eventful <= 3.0),
    );
    show(
        &format!("{what}: writes / change events"),
        &costs.iter().map(|c| c.writes_cell()).collect::<Vec<_>>(),
        "-",
        None,
    );
}

/// The comparison table's rows.
pub async fn rows(env: &Env) -> Result<()> {
    let mut kinds = vec![Kind::Ours, Kind::OursUnfair, Kind::Poller];
    if env.python.is_some() {
        kinds.push(Kind::Python);
    }
    let header: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    println!(
        "\nContention, each lock in peer processes of its own, same server, same run{}:\n",
        if env.python.is_none() {
            " (Python column skipped: no python3 with venv support)"
        } else {
            ""
        }
    );
    println!("| figure | {} | target | met |", header.join(" | "));
    println!("|---|{}---|---|", "---|".repeat(kinds.len()));

    let mut ones = Vec::new();
    for &kind in &kinds {
        ones.push(cycle(kind, env).await?);
    }
    show(
        "one worker, acquire+release cycles/s",
        &ones
            .iter()
            .map(|r| format!("{:.1}", r.rate))
            .collect::<Vec<_>>(),
        "-",
        None,
    );
    server_cpu_row("one worker", &ones);
    let one = ones[0].rate;
    let our_cycle = Duration::from_secs_f64(1.0 / one.max(1e-9));

    // 4 waiters in one process as well: one change stream instead of four,
    // which takes out the test server's per-stream cost of a write.
    for (waiters, processes) in [(1, 1), (4, 4), (4, 1)] {
        let place = match processes {
            1 if waiters > 1 => format!("{waiters} waiters in 1 other process"),
            _ => format!("{waiters} waiter(s) in other processes"),
        };
        let mut p50s = Vec::new();
        let mut cells = Vec::new();
        let mut costs = Vec::new();
        for &kind in &kinds {
            let mut handed = handoff(kind, env, waiters, processes).await?;
            let samples = &mut handed.samples;
            let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
            p50s.push(p50);
            cells.push(format!("{} / {}", ms(p50), ms(p99)));
            costs.push(handed.costs);
        }
        show(
            &format!("handoff to {place}, p50 / p99"),
            &cells,
            &format!(
                "p50 <= 0.5x poller's ({:.2}x)",
                p50s[0].as_secs_f64() / p50s[POLLER].as_secs_f64().max(1e-9)
            ),
            Some(p50s[0].as_secs_f64() <= 0.5 * p50s[POLLER].as_secs_f64()),
        );
        costs_rows(
            &format!("handoff to {place}, per handoff"),
            &costs.iter().collect::<Vec<_>>(),
        );
    }

    for workers in [4, 16, 64] {
        let mut results = Vec::new();
        for &kind in &kinds {
            results.push(contend(kind, env, workers, 4).await?);
        }
        let place = format!("{workers} workers over 4 processes");
        contended_rows(&place, workers, &mut results, one, our_cycle);
    }

    // The same code with the test server's per-stream cost taken out: all
    // workers in one process, which has one change stream.
    for workers in [4, 16] {
        let mut results = Vec::new();
        for &kind in &kinds {
            results.push(contend(kind, env, workers, 1).await?);
        }
        let place = format!("{workers} workers in one process");
        contended_rows(&place, workers, &mut results, one, our_cycle);
    }
    let [without, with, plain] = stream_cost(env, 4).await?;
    println!(
        "\nThe test server's cost of change streams: a write takes {} with no stream open, {} with 4 \
         of ours open (+{} per stream) and {} with 4 plain ones (no pipeline, no lookup; the write \
         is a one-stage pipeline update, a replace event here as on 4.4, as this crate's contended \
         writes are), and every write ends every stream's pending getMore, matching or not.",
        ms(without),
        ms(with),
        ms(with.saturating_sub(without) / 4),
        ms(plain)
    );
    let mut floors = Vec::new();
    for streams in [1, 2, 4] {
        floors.push(format!(
            "{} with {streams} open",
            ms(event_floor(env, streams).await?)
        ));
    }
    println!(
        "The floor of any handoff by change event on this server (a plain write until the first \
         plain stream hears it, p50): {}.",
        floors.join(", ")
    );
    let costs = queue_cost(env, &[0, 3, 15, 60]).await?;
    let list = |pick: fn(&(usize, Duration, Duration)) -> Duration| {
        costs
            .iter()
            .map(|c| format!("{} ({} entries)", ms(pick(c)), c.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "The test server's cost of the queue, per write (no stream open): an attempt that joins it takes {}; \
         a release that hands over takes {}.",
        list(|c| c.1),
        list(|c| c.2)
    );
    println!();

    let mut idle_rates = Vec::new();
    for &kind in &kinds {
        idle_rates.push(idle(kind, env, 4).await?);
    }
    show(
        "idle, 4 waiters on a held key: commands/s per waiter",
        &idle_rates
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>(),
        &format!(
            "<= 1% of poller's ({:.2}%)",
            100.0 * idle_rates[0] / idle_rates[POLLER].max(1e-9)
        ),
        Some(idle_rates[0] <= 0.01 * idle_rates[POLLER]),
    );
    Ok(())
}

/// Median time of an `updateOne` with no change stream open on the
/// collection, with `streams` of this crate's streams open (each waiting in
/// a `getMore`), and with `streams` plain ones (no pipeline, no lookup).
/// The update is a one-stage pipeline, as every contended write of this
/// crate is: the test server reports it as a `replace` event with the whole
/// document (as MongoDB 4.4 does), so no stream looks the document up.
pub async fn stream_cost(env: &Env, streams: usize) -> Result<[Duration; 3]> {
    use futures_util::StreamExt;
    use mongodb::bson::doc;

    let client = mongodb::Client::with_uri_str(&env.uri).await?;
    let collection = client
        .database(&env.db)
        .collection::<mongodb::bson::Document>("stream_cost");
    let time = || async {
        let mut samples = Vec::new();
        for i in 0..200_i64 {
            let start = std::time::Instant::now();
            collection
                .update_one(doc! { "_id": 1 }, vec![doc! { "$set": { "n": i } }])
                .upsert(true)
                .await?;
            samples.push(start.elapsed());
        }
        Ok::<_, crate::BoxError>(percentile(&mut samples, 0.5))
    };
    let without = time().await?;
    let mut with = [without; 2];
    for (plain, figure) in [false, true].into_iter().zip(&mut with) {
        let mut tasks = Vec::new();
        for _ in 0..streams {
            let watch = collection.watch();
            let mut stream = if plain {
                watch.await?
            } else {
                watch
                    .pipeline(mongolock::__private::raw::release_events("bench", true))
                    .full_document(mongodb::options::FullDocumentType::UpdateLookup)
                    .await?
            };
            tasks.push(tokio::spawn(async move {
                while stream.next().await.is_some() {}
            }));
        }
        *figure = time().await?;
        for task in tasks {
            task.abort();
        }
    }
    Ok([without, with[0], with[1]])
}

/// The floor of any handoff by change event on this server, p50: from
/// sending a plain `updateOne` to the first of `streams` plain change
/// streams (no pipeline, no lookup; each waiting in a `getMore`) receiving
/// its event. A handoff by event needs at least that write and that event.
pub async fn event_floor(env: &Env, streams: usize) -> Result<Duration> {
    use futures_util::StreamExt;
    use mongodb::bson::doc;
    use std::time::Instant;

    let client = mongodb::Client::with_uri_str(&env.uri).await?;
    let collection = client
        .database(&env.db)
        .collection::<mongodb::bson::Document>("event_floor");
    let (heard, mut hearing) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut stream = collection.watch().await?;
        let heard = heard.clone();
        tasks.push(tokio::spawn(async move {
            while stream.next().await.is_some() {
                if heard.send(Instant::now()).is_err() {
                    return;
                }
            }
        }));
    }
    let mut samples = Vec::new();
    for i in 0..100_i64 {
        let start = Instant::now();
        collection
            .update_one(doc! { "_id": 1 }, doc! { "$set": { "n": i } })
            .upsert(true)
            .await?;
        let mut first = None::<Instant>;
        for _ in 0..streams {
            let at = tokio::time::timeout(Duration::from_secs(10), hearing.recv())
                .await?
                .ok_or("a stream ended")?;
            first = Some(first.map_or(at, |f| f.min(at)));
        }
        samples.push(first.map_or(Duration::ZERO, |f| f.saturating_duration_since(start)));
    }
    for task in tasks {
        task.abort();
    }
    Ok(percentile(&mut samples, 0.5))
}

/// Server time of the two writes of a contended fair acquisition, by queue
/// length: the attempt that joins the queue (lock held) and the release
/// that hands the lock to the head. Each timed write starts from the same
/// document, reset between them.
pub async fn queue_cost(env: &Env, lengths: &[usize]) -> Result<Vec<(usize, Duration, Duration)>> {
    use mongodb::bson::{doc, DateTime, Document};
    use mongolock::__private::raw;

    let client = mongodb::Client::with_uri_str(&env.uri).await?;
    let collection = client
        .database(&env.db)
        .collection::<Document>("queue_cost");
    let far = DateTime::from_millis(DateTime::now().timestamp_millis() + 600_000);
    let mut out = Vec::new();
    for &n in lengths {
        let queue: Vec<Document> = (0..n)
            .map(|i| doc! { "w": format!("w{i}"), "p": "peer", "exp": far, "o": format!("o{i}"), "l": 60_000_i64 })
            .collect();
        let mut held = doc! {
            "_id": "k", "owner": "holder", "claim": "c", "token": 1_i64,
            "acquired_at": DateTime::now(), "expires_at": far,
            "locked": true, "expire": far, "created": DateTime::now(),
        };
        if n > 0 {
            held.insert("queue", queue);
        }
        let (mut joins, mut releases) = (Vec::new(), Vec::new());
        for _ in 0..60 {
            collection
                .replace_one(doc! { "_id": "k" }, &held)
                .upsert(true)
                .await?;
            let fair = raw::Queueing {
                tag: "bench",
                expiry_millis: 15_000,
                join: true,
                expect_none: false,
            };
            let start = std::time::Instant::now();
            collection
                .find_one_and_update(
                    raw::by_key("k"),
                    raw::acquire_pipeline("joiner", "j", 60_000, Some(fair), None),
                )
                .upsert(true)
                .return_document(mongodb::options::ReturnDocument::After)
                .await?;
            joins.push(start.elapsed());
            collection
                .replace_one(doc! { "_id": "k" }, &held)
                .upsert(true)
                .await?;
            let start = std::time::Instant::now();
            collection
                .find_one_and_update(
                    raw::by_holder("k", "holder", Some(1)),
                    raw::release_update(0, "r", true),
                )
                .return_document(mongodb::options::ReturnDocument::After)
                .await?;
            releases.push(start.elapsed());
        }
        out.push((
            n,
            percentile(&mut joins, 0.5),
            percentile(&mut releases, 0.5),
        ));
    }
    Ok(out)
}
