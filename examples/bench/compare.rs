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

    /// Commands sent so far, and of them the empty `getMore`s.
    async fn commands(&mut self) -> Result<(u64, u64)> {
        self.send("COMMANDS").await?;
        let words = self.expect("COMMANDS").await?;
        Ok((words[0].parse()?, words[1].parse()?))
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
}

/// One-worker cycle: acquisitions+releases per second by one worker.
pub async fn cycle(kind: Kind, env: &Env) -> Result<f64> {
    let contended = contend(kind, env, 1, 1).await?;
    Ok(contended.rate)
}

/// Handoff to `waiters` waiters in other processes: from the start of the
/// holder's release to the first waiter's acquisition, by the machine's
/// clock shared by all processes.
///
/// Also counts the commands every peer sends from just before the release
/// until the last waiter has taken and released the lock, per handoff:
/// each round hands the lock on `waiters` times (the last release has no
/// waiter to go to, and is counted with the rest).
pub async fn handoff(kind: Kind, env: &Env, waiters: usize) -> Result<Handoffs> {
    const ROUNDS: usize = 15;
    let collection = format!("handoff_{}_{waiters}", kind.slug());
    let mut holder = Peer::spawn(kind, env, &collection).await?;
    let mut peers = Vec::new();
    for _ in 0..waiters {
        peers.push(Peer::spawn(kind, env, &collection).await?);
    }
    let mut samples = Vec::new();
    let (mut commands, mut empty) = (0, 0);
    for round in 0..ROUNDS {
        let key = format!("k{round}");
        holder.send(&format!("HOLD {key}")).await?;
        holder.expect("HELD").await?;
        for peer in &mut peers {
            peer.send(&format!("WAIT {key}")).await?;
        }
        // Let every waiter find the lock taken and settle; a random hold
        // keeps the release out of step with any polling period.
        let hold = 300 + rand::random::<u64>() % 100;
        tokio::time::sleep(Duration::from_millis(hold)).await;
        let before = total_commands(&mut holder, &mut peers).await?;
        holder.send(&format!("RELEASE {key}")).await?;
        let released: u128 = holder.expect("RELEASED").await?[1].parse()?;
        let mut first = u128::MAX;
        for peer in &mut peers {
            let at: u128 = peer.expect("ACQUIRED").await?[1].parse()?;
            first = first.min(at);
            peer.expect("DONE").await?;
        }
        samples.push(Duration::from_micros(first.saturating_sub(released) as u64));
        let after = total_commands(&mut holder, &mut peers).await?;
        commands += after.0 - before.0;
        empty += after.1 - before.1;
    }
    holder.quit().await?;
    for peer in peers {
        peer.quit().await?;
    }
    let handoffs = (ROUNDS * waiters) as f64;
    Ok(Handoffs {
        samples,
        commands_per_handoff: commands as f64 / handoffs,
        eventful_commands_per_handoff: (commands - empty) as f64 / handoffs,
    })
}

/// Handoff latencies, and the commands per handoff.
pub struct Handoffs {
    pub samples: Vec<Duration>,
    pub commands_per_handoff: f64,
    /// The same without `getMore`s that came back empty.
    pub eventful_commands_per_handoff: f64,
}

/// Commands sent so far by all of `holder` and `peers`, and of them the
/// empty `getMore`s.
async fn total_commands(holder: &mut Peer, peers: &mut [Peer]) -> Result<(u64, u64)> {
    let mut total = holder.commands().await?;
    for peer in peers {
        let (commands, empty) = peer.commands().await?;
        total = (total.0 + commands, total.1 + empty);
    }
    Ok(total)
}

/// `workers` workers on one key, spread over `processes` processes.
pub struct Contended {
    pub rate: f64,
    pub latencies: Vec<Duration>,
    pub commands_per_acquisition: f64,
    /// The same without `getMore`s that came back empty.
    pub eventful_commands_per_acquisition: f64,
}

pub async fn contend(kind: Kind, env: &Env, workers: usize, processes: usize) -> Result<Contended> {
    let window = Duration::from_secs(4);
    let collection = format!("contend_{}_{workers}_{processes}", kind.slug());
    let mut peers = Vec::new();
    for _ in 0..processes {
        peers.push(Peer::spawn(kind, env, &collection).await?);
    }
    let (mut before, mut empty_before) = (0, 0);
    for (p, peer) in peers.iter_mut().enumerate() {
        let tasks = workers / processes + usize::from(p < workers % processes);
        let (commands, empty) = peer.commands().await?;
        before += commands;
        empty_before += empty;
        peer.send(&format!("CONTEND w {tasks} {}", window.as_secs_f64()))
            .await?;
        peer.expect("SET").await?;
    }
    for peer in &mut peers {
        peer.send("GO").await?;
    }
    let mut latencies = Vec::new();
    for peer in &mut peers {
        let words = peer.expect("LATENCIES").await?;
        if let Some(list) = words.get(1) {
            for us in list.split(',') {
                latencies.push(Duration::from_micros(us.parse()?));
            }
        }
    }
    let (mut after, mut empty_after) = (0, 0);
    for peer in &mut peers {
        let (commands, empty) = peer.commands().await?;
        after += commands;
        empty_after += empty;
    }
    for peer in peers {
        peer.quit().await?;
    }
    let acquisitions = latencies.len().max(1) as f64;
    Ok(Contended {
        rate: latencies.len() as f64 / window.as_secs_f64(),
        commands_per_acquisition: (after - before) as f64 / acquisitions,
        eventful_commands_per_acquisition: ((after - before) - (empty_after - empty_before)) as f64
            / acquisitions,
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

/// The throughput target, with our ratios, and whether it is met: at least
/// 1.2x the poller's acquisitions/s and 0.8x our own one-worker rate `one`.
fn throughput_target(rates: &[f64], one: f64) -> (String, bool) {
    let (ours, poller) = (rates[0], rates[POLLER]);
    let text = format!(
        ">= 1.2x poller ({:.2}x), >= 0.8x one worker ({:.2}x)",
        ours / poller.max(1e-9),
        ours / one.max(1e-9)
    );
    (text, ours >= 1.2 * poller && ours >= 0.8 * one)
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
    let show = |figure: &str, cells: &[String], target: &str, met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        println!("| {figure} | {} | {target} | {met} |", cells.join(" | "));
    };

    let mut one = Vec::new();
    for &kind in &kinds {
        one.push(cycle(kind, env).await?);
    }
    show(
        "one worker, acquire+release cycles/s",
        &one.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>(),
        "-",
        None,
    );
    let our_cycle = Duration::from_secs_f64(1.0 / one[0].max(1e-9));

    for waiters in [1, 4] {
        let mut p50s = Vec::new();
        let mut cells = Vec::new();
        let mut commands = Vec::new();
        for &kind in &kinds {
            let mut handed = handoff(kind, env, waiters).await?;
            let samples = &mut handed.samples;
            let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
            p50s.push(p50);
            cells.push(format!("{} / {}", ms(p50), ms(p99)));
            commands.push((
                handed.commands_per_handoff,
                handed.eventful_commands_per_handoff,
            ));
        }
        show(
            &format!("handoff to {waiters} waiter(s) in other processes, p50 / p99"),
            &cells,
            &format!(
                "p50 <= poller's ({:.2}x)",
                p50s[0].as_secs_f64() / p50s[POLLER].as_secs_f64().max(1e-9)
            ),
            Some(p50s[0] <= p50s[POLLER]),
        );
        show(
            &format!("handoff to {waiters} waiter(s), server commands per handoff"),
            &commands
                .iter()
                .map(|(all, eventful)| format!("{all:.1} ({eventful:.1} without empty getMores)"))
                .collect::<Vec<_>>(),
            "<= 3 (without empty getMores, as on mongod)",
            Some(commands[0].1 <= 3.0),
        );
    }

    for workers in [4, 16, 64] {
        let mut results = Vec::new();
        for &kind in &kinds {
            results.push(contend(kind, env, workers, 4).await?);
        }
        let rates: Vec<f64> = results.iter().map(|r| r.rate).collect();
        let (target, met) = throughput_target(&rates, one[0]);
        show(
            &format!("{workers} workers over 4 processes, acquisitions/s"),
            &rates.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>(),
            &target,
            Some(met),
        );
        let bound = our_cycle * workers as u32;
        let mut cells = Vec::new();
        let mut ours_p99 = Duration::ZERO;
        for (i, result) in results.iter_mut().enumerate() {
            let (p50, p99) = (
                percentile(&mut result.latencies, 0.5),
                percentile(&mut result.latencies, 0.99),
            );
            let worst = percentile(&mut result.latencies, 1.0);
            if i == 0 {
                ours_p99 = p99;
            }
            cells.push(format!(
                "{} / {} (worst {:.1}x N x cycle)",
                ms(p50),
                ms(p99),
                worst.as_secs_f64() / bound.as_secs_f64()
            ));
        }
        show(
            &format!("{workers} workers, acquire p50 / p99"),
            &cells,
            &format!(
                "p99 <= 2x N x cycle = {} ({:.2}x)",
                ms(bound * 2),
                ours_p99.as_secs_f64() / bound.as_secs_f64()
            ),
            Some(ours_p99 <= bound * 2),
        );
        let commands: Vec<String> = results
            .iter()
            .map(|r| {
                format!(
                    "{:.1} ({:.1} without empty getMores)",
                    r.commands_per_acquisition, r.eventful_commands_per_acquisition
                )
            })
            .collect();
        let ours = results[0].eventful_commands_per_acquisition;
        show(
            &format!("{workers} workers, server commands per acquisition"),
            &commands,
            "<= 3 (without empty getMores, as on mongod)",
            Some(ours <= 3.0),
        );
    }

    // The same code with the test server's per-stream cost taken out: all
    // workers in one process, which has one change stream.
    let mut rates = Vec::new();
    for &kind in &kinds {
        rates.push(contend(kind, env, 4, 1).await?.rate);
    }
    let (target, met) = throughput_target(&rates, one[0]);
    show(
        "4 workers in one process, acquisitions/s",
        &rates.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>(),
        &target,
        Some(met),
    );
    let (without, with) = stream_cost(env, 4).await?;
    println!(
        "\nThe test server's cost of change streams: a write takes {} with no stream open, {} with 4 \
         (+{} per stream), and every write ends every stream's pending getMore, matching or not.",
        ms(without),
        ms(with),
        ms(with.saturating_sub(without) / 4)
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
/// collection, and with `streams` open (each waiting in a `getMore`).
pub async fn stream_cost(env: &Env, streams: usize) -> Result<(Duration, Duration)> {
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
                .update_one(doc! { "_id": 1 }, doc! { "$set": { "n": i } })
                .upsert(true)
                .await?;
            samples.push(start.elapsed());
        }
        Ok::<_, crate::BoxError>(percentile(&mut samples, 0.5))
    };
    let without = time().await?;
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut stream = collection
            .watch()
            .pipeline(mongolock::__private::raw::release_events("bench", true))
            .full_document(mongodb::options::FullDocumentType::UpdateLookup)
            .await?;
        tasks.push(tokio::spawn(async move {
            while stream.next().await.is_some() {}
        }));
    }
    let with = time().await?;
    for task in tasks {
        task.abort();
    }
    Ok((without, with))
}
