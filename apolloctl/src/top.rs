//! `apolloctl top`: a live terminal view of the cluster as APOLLO sees it.
//!
//! Fed from NATS only: the latest `ClusterInsight` and forecast of every
//! node (replayed from JetStream at start, then followed), early warnings
//! and the policies the engines issue. Per node: allocation (requests) and
//! measured use of CPU, memory and GPU, the forecast at the horizon with its
//! interval, and a sparkline of recent use.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use anyhow::Context as _;
use apollo_proto::{
    ClusterInsight, OrchestrationPolicy, ResourceAlert, ResourcePrediction, SchedulingPolicy,
};
use futures::StreamExt as _;
use ratatui::{
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Cell, List, ListItem, Paragraph, Row, Sparkline, Table},
    Frame,
};

use crate::inspect::{action_name, decision_name};

/// Arguments of `apolloctl top`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Keys: q quits, s changes the sort, arrows scroll.\n\nExample:\n  apolloctl top\n  apolloctl top --once --wait 5s     # one frame as text, for scripts"
)]
pub(crate) struct Args {
    /// NATS server.
    #[arg(long, env = "APOLLO_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// First subject token of APOLLO's subjects.
    #[arg(long, env = "APOLLO_SUBJECT_PREFIX", default_value = "apollo")]
    subject_prefix: String,
    /// Stream name prefix.
    #[arg(long, env = "APOLLO_STREAM_PREFIX", default_value = "APOLLO")]
    stream_prefix: String,
    /// Print one frame as plain text after --wait and exit (no terminal UI).
    #[arg(long)]
    once: bool,
    /// With --once: how long to collect before printing.
    #[arg(long, default_value = "3s", value_parser = apollo_common::config::parse_duration)]
    wait: Duration,
    /// With --once: width and height of the frame.
    #[arg(long, default_value = "140x40", value_parser = parse_size)]
    size: (u16, u16),
}

fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("size must be WIDTHxHEIGHT, got {s:?}"))?;
    let w: u16 = w.parse().map_err(|_| format!("bad width in {s:?}"))?;
    let h: u16 = h.parse().map_err(|_| format!("bad height in {s:?}"))?;
    if w < 60 || h < 15 {
        return Err("the view needs at least 60x15".into());
    }
    Ok((w, h))
}

const SPARK_POINTS: usize = 60;
const RECENT: usize = 50;

/// One node's row.
#[derive(Debug, Default, Clone)]
pub(crate) struct NodeRow {
    /// Requests / allocatable, percent: cpu, memory, gpu.
    alloc: [f64; 3],
    /// Measured use, percent: cpu, memory, gpu.
    used: [f64; 3],
    /// Forecast at the farthest horizon (point, low, high) for cpu, memory, gpu.
    forecast: Option<[(f64, f64, f64); 3]>,
    model: String,
    alerts: Vec<String>,
    history: VecDeque<u64>,
}

/// Sort order of the node table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum SortBy {
    /// Highest measured use first.
    #[default]
    Used,
    /// Highest allocation first.
    Allocated,
    /// Highest forecast upper bound first.
    Forecast,
    /// By name.
    Name,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            Self::Used => Self::Allocated,
            Self::Allocated => Self::Forecast,
            Self::Forecast => Self::Name,
            Self::Name => Self::Used,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Used => "use",
            Self::Allocated => "allocation",
            Self::Forecast => "forecast upper bound",
            Self::Name => "name",
        }
    }
}

/// Everything the view shows, updated from bus messages.
#[derive(Debug, Default)]
pub(crate) struct TopModel {
    nodes: BTreeMap<String, NodeRow>,
    cluster_used: VecDeque<u64>,
    alerts: VecDeque<String>,
    policies: VecDeque<String>,
    messages: u64,
    undecodable: u64,
    sort: SortBy,
    scroll: usize,
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 && part.is_finite() {
        (100.0 * part / whole).clamp(0.0, 100.0)
    } else {
        0.0
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(v);
}

impl TopModel {
    /// Applies one message from the bus (subject without the prefix).
    pub(crate) fn apply(&mut self, rest: &str, payload: &[u8]) {
        self.messages += 1;
        let ok = if rest.starts_with("insight.cluster.") {
            serde_json::from_slice::<ClusterInsight>(payload)
                .map(|i| self.insight(&i))
                .is_ok()
        } else if rest.starts_with("forecast.") {
            serde_json::from_slice::<ResourcePrediction>(payload)
                .map(|p| self.forecast(&p))
                .is_ok()
        } else if rest.starts_with("alert.") {
            serde_json::from_slice::<ResourceAlert>(payload)
                .map(|a| self.alert(&a))
                .is_ok()
        } else if rest.starts_with("policy.scheduling.") {
            serde_json::from_slice::<SchedulingPolicy>(payload)
                .map(|p| {
                    let top = p
                        .node_preferences
                        .first()
                        .map(|n| format!("{} ({})", n.node_name, n.score))
                        .unwrap_or_else(|| "-".into());
                    push_bounded(
                        &mut self.policies,
                        format!(
                            "sched {:<7} {}/{} -> {top}",
                            decision_name(p.decision),
                            p.pod_namespace,
                            p.pod_name
                        ),
                        RECENT,
                    );
                })
                .is_ok()
        } else if rest.starts_with("policy.orchestration.") {
            serde_json::from_slice::<OrchestrationPolicy>(payload)
                .map(|p| {
                    push_bounded(
                        &mut self.policies,
                        format!("orch  {:<10} {}", action_name(p.action), p.reason),
                        RECENT,
                    );
                })
                .is_ok()
        } else {
            true
        };
        if !ok {
            self.undecodable += 1;
        }
    }

    fn insight(&mut self, i: &ClusterInsight) {
        let name = i.node_name.trim();
        if name.is_empty() {
            return;
        }
        let r = i.node_resources.unwrap_or_default();
        let gpus = i.gpu_devices.len().max(r.gpu_allocatable.max(0) as usize) as f64;
        let gpu_alloc_milli: f64 = i
            .gpu_devices
            .iter()
            .map(|g| f64::from(g.allocated_milli.clamp(0, 1000)))
            .sum();
        let gpu_util = if i.gpu_devices.is_empty() {
            0.0
        } else {
            i.gpu_devices
                .iter()
                .map(|g| g.utilization_percent)
                .filter(|v| v.is_finite())
                .sum::<f64>()
                / i.gpu_devices.len() as f64
        };
        let row = self.nodes.entry(name.to_string()).or_default();
        row.alloc = [
            pct(r.cpu_requested_cores, r.cpu_allocatable_cores),
            pct(
                r.memory_requested_bytes as f64,
                r.memory_allocatable_bytes as f64,
            ),
            pct(gpu_alloc_milli, gpus * 1000.0),
        ];
        row.used = [
            pct(r.cpu_used_cores, r.cpu_allocatable_cores),
            pct(
                r.memory_used_bytes as f64,
                r.memory_allocatable_bytes as f64,
            ),
            gpu_util.clamp(0.0, 100.0),
        ];
        let peak = row.used.iter().copied().fold(0.0, f64::max);
        push_bounded(&mut row.history, peak.round() as u64, SPARK_POINTS);
        let n = self.nodes.len() as f64;
        let mean = self
            .nodes
            .values()
            .map(|r| r.used.iter().copied().fold(0.0, f64::max))
            .sum::<f64>()
            / n.max(1.0);
        push_bounded(&mut self.cluster_used, mean.round() as u64, 200);
    }

    fn forecast(&mut self, p: &ResourcePrediction) {
        let name = p.node_name.trim();
        if name.is_empty() {
            return;
        }
        let (Some(pt), lo, hi) = (
            p.predicted_usage.last(),
            p.lower_bound.last().cloned().unwrap_or_default(),
            p.upper_bound.last().cloned().unwrap_or_default(),
        ) else {
            return;
        };
        let row = self.nodes.entry(name.to_string()).or_default();
        row.forecast = Some([
            (pt.cpu_usage, lo.cpu_usage, hi.cpu_usage),
            (pt.memory_usage, lo.memory_usage, hi.memory_usage),
            (pt.gpu_usage, lo.gpu_usage, hi.gpu_usage),
        ]);
        row.model = p.model_type.clone();
    }

    fn alert(&mut self, a: &ResourceAlert) {
        let raised = a.state == apollo_proto::AlertState::Raised as i32;
        let tag = format!("{}:{}", a.kind, a.resource);
        if let Some(row) = self.nodes.get_mut(a.node_name.trim()) {
            row.alerts.retain(|t| *t != tag);
            if raised {
                row.alerts.push(tag.clone());
            }
        }
        push_bounded(
            &mut self.alerts,
            format!(
                "{} {tag} {}: {}",
                if raised { "RAISED " } else { "cleared" },
                a.node_name,
                a.message
            ),
            RECENT,
        );
    }

    fn sorted(&self) -> Vec<(&String, &NodeRow)> {
        let mut rows: Vec<_> = self.nodes.iter().collect();
        let key = |r: &NodeRow| -> f64 {
            match self.sort {
                SortBy::Used => r.used.iter().copied().fold(0.0, f64::max),
                SortBy::Allocated => r.alloc.iter().copied().fold(0.0, f64::max),
                SortBy::Forecast => r
                    .forecast
                    .map(|f| f.iter().map(|x| x.2).fold(0.0, f64::max))
                    .unwrap_or(0.0),
                SortBy::Name => 0.0,
            }
        };
        if self.sort != SortBy::Name {
            rows.sort_by(|a, b| key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(b.0)));
        }
        rows
    }

    /// Draws the whole view.
    pub(crate) fn draw(&self, f: &mut Frame<'_>, source: &str) {
        let [head, spark, table, bottom] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(4),
            Constraint::Min(6),
            Constraint::Length(9),
        ])
        .areas(f.area());
        let alerting = self.nodes.values().filter(|r| !r.alerts.is_empty()).count();
        f.render_widget(
            Paragraph::new(Line::from(format!(
                " apolloctl top — {source} — {} nodes, {alerting} with alerts, {} messages{} — sort: {} (s) — q quits",
                self.nodes.len(),
                self.messages,
                if self.undecodable > 0 {
                    format!(" ({} undecodable)", self.undecodable)
                } else {
                    String::new()
                },
                self.sort.label()
            )))
            .style(Style::default().add_modifier(Modifier::BOLD)),
            head,
        );
        let cluster: Vec<u64> = self.cluster_used.iter().copied().collect();
        f.render_widget(
            Sparkline::default()
                .block(Block::bordered().title(format!(
                    " cluster mean of per-node peak use: {}% ",
                    cluster.last().copied().unwrap_or(0)
                )))
                .data(&cluster)
                .max(100)
                .style(Style::default().fg(Color::Cyan)),
            spark,
        );
        let header = Row::new(vec![
            "node",
            "cpu a/u",
            "mem a/u",
            "gpu a/u",
            "forecast cpu",
            "forecast mem",
            "forecast gpu",
            "recent use",
            "alerts",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD));
        let visible = table.height.saturating_sub(3) as usize;
        let rows: Vec<Row<'_>> = self
            .sorted()
            .into_iter()
            .skip(self.scroll)
            .take(visible)
            .map(|(name, r)| {
                let au = |i: usize| format!("{:>3.0}/{:<3.0}", r.alloc[i], r.used[i]);
                let fc = |i: usize| {
                    r.forecast
                        .map(|f| format!("{:>3.0} [{:>3.0},{:>3.0}]", f[i].0, f[i].1, f[i].2))
                        .unwrap_or_else(|| "-".into())
                };
                let spark = sparkline_text(&r.history, 16);
                let style = if r.alerts.is_empty() {
                    Style::default()
                } else {
                    Style::default().fg(Color::Red)
                };
                Row::new(vec![
                    Cell::from(name.clone()),
                    Cell::from(au(0)),
                    Cell::from(au(1)),
                    Cell::from(au(2)),
                    Cell::from(fc(0)),
                    Cell::from(fc(1)),
                    Cell::from(fc(2)),
                    Cell::from(spark),
                    Cell::from(r.alerts.join(",")),
                ])
                .style(style)
            })
            .collect();
        f.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Length(18),
                    Constraint::Length(8),
                    Constraint::Length(8),
                    Constraint::Length(8),
                    Constraint::Length(15),
                    Constraint::Length(15),
                    Constraint::Length(15),
                    Constraint::Length(17),
                    Constraint::Min(10),
                ],
            )
            .header(header)
            .block(
                Block::bordered()
                    .title(" nodes: allocated/used %, forecast at the horizon [interval] "),
            ),
            table,
        );
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(bottom);
        let list = |items: &VecDeque<String>, title: &'static str| {
            List::new(
                items
                    .iter()
                    .rev()
                    .map(|s| ListItem::new(s.clone()))
                    .collect::<Vec<_>>(),
            )
            .block(Block::bordered().title(title))
        };
        f.render_widget(list(&self.alerts, " early warnings "), left);
        f.render_widget(list(&self.policies, " recent policies "), right);
    }
}

/// A sparkline in block characters, for table cells.
fn sparkline_text(values: &VecDeque<u64>, width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    values
        .iter()
        .skip(values.len().saturating_sub(width))
        .map(|v| BARS[((*v).min(100) as usize * 7) / 100])
        .collect()
}

/// Replays the latest message per subject of the streams the view needs,
/// then follows them; sends `(subject, payload)` into `tx`.
async fn feed(
    args: &Args,
    tx: tokio::sync::mpsc::Sender<(String, bytes::Bytes)>,
) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let client = crate::client::nats(&args.nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let p = &args.subject_prefix;
    for (stream, filter) in [
        ("INSIGHT", format!("{p}.insight.cluster.>")),
        ("FORECAST", format!("{p}.forecast.>")),
        ("ALERT", format!("{p}.alert.>")),
        ("POLICY", format!("{p}.policy.orchestration.>")),
    ] {
        let name = format!("{}_{stream}", args.stream_prefix);
        let s = js.get_stream(&name).await.with_context(|| {
            format!(
                "stream {name} not found: is APOLLO running on {}?",
                args.nats_url
            )
        })?;
        let consumer = s
            .create_consumer(OrderedConfig {
                filter_subject: filter.clone(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot follow {filter}"))?;
        let mut messages = consumer
            .messages()
            .await
            .with_context(|| format!("cannot follow {filter}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = messages.next().await {
                if tx
                    .send((m.subject.to_string(), m.payload.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    // Scheduling policies are many; only new ones, from a core subscription.
    let mut sub = client
        .subscribe(format!("{p}.policy.scheduling.>"))
        .await
        .context("cannot subscribe to scheduling policies")?;
    tokio::spawn(async move {
        let _client = client;
        while let Some(m) = sub.next().await {
            if tx.send((m.subject.to_string(), m.payload)).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// `apolloctl top`.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(10_000);
    feed(&args, tx).await?;
    let prefix = format!("{}.", args.subject_prefix);
    let mut model = TopModel::default();
    if args.once {
        let until = tokio::time::sleep(args.wait);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => break,
                m = rx.recv() => match m {
                    Some((s, p)) => model.apply(s.strip_prefix(&prefix).unwrap_or(&s), &p),
                    None => break,
                },
            }
        }
        let (w, h) = args.size;
        let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h))?;
        term.draw(|f| model.draw(f, &args.nats_url))?;
        print!("{}", buffer_text(term.backend().buffer()));
        return Ok(());
    }
    let (key_tx, mut keys) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || loop {
        use ratatui::crossterm::event::{self, Event, KeyEventKind};
        match event::poll(Duration::from_millis(200)) {
            Ok(true) => {
                if let Ok(Event::Key(k)) = event::read() {
                    if k.kind == KeyEventKind::Press && key_tx.blocking_send(k.code).is_err() {
                        return;
                    }
                }
            }
            Ok(false) => {
                if key_tx.is_closed() {
                    return;
                }
            }
            Err(_) => return,
        }
    });
    let mut terminal =
        ratatui::try_init().context("cannot open the terminal (use --once without a terminal)")?;
    let result = async {
        let mut redraw = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                m = rx.recv() => if let Some((s, p)) = m {
                    model.apply(s.strip_prefix(&prefix).unwrap_or(&s), &p);
                    continue;
                },
                k = keys.recv() => {
                    use ratatui::crossterm::event::KeyCode;
                    match k {
                        Some(KeyCode::Char('q')) | Some(KeyCode::Esc) | None => return Ok(()),
                        Some(KeyCode::Char('s')) => model.sort = model.sort.next(),
                        Some(KeyCode::Down) => model.scroll = (model.scroll + 1).min(model.nodes.len().saturating_sub(1)),
                        Some(KeyCode::Up) => model.scroll = model.scroll.saturating_sub(1),
                        Some(KeyCode::PageDown) => model.scroll = (model.scroll + 20).min(model.nodes.len().saturating_sub(1)),
                        Some(KeyCode::PageUp) => model.scroll = model.scroll.saturating_sub(20),
                        _ => {}
                    }
                }
                _ = redraw.tick() => {}
            }
            terminal.draw(|f| model.draw(f, &args.nats_url))?;
        }
    }
    .await;
    ratatui::restore();
    result
}

fn buffer_text(buf: &ratatui::buffer::Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in 0..area.height {
        let mut line = String::new();
        for x in 0..area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use apollo_proto::{GpuStatus, NodeResources, TimestampedResources};

    fn insight(name: &str, cpu_req: f64, cpu_used: f64, gpu_util: f64) -> Vec<u8> {
        serde_json::to_vec(&ClusterInsight {
            node_name: name.into(),
            node_resources: Some(NodeResources {
                cpu_allocatable_cores: 10.0,
                cpu_requested_cores: cpu_req,
                cpu_used_cores: cpu_used,
                memory_allocatable_bytes: 100,
                memory_used_bytes: 50,
                ..Default::default()
            }),
            gpu_devices: vec![GpuStatus {
                gpu_id: "g0".into(),
                utilization_percent: gpu_util,
                allocated_milli: 500,
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn insights_forecasts_and_alerts_fill_the_rows() {
        let mut m = TopModel::default();
        m.apply("insight.cluster.n1", &insight("n1", 8.0, 2.0, 30.0));
        m.apply("insight.cluster.n2", &insight("n2", 1.0, 9.5, 0.0));
        let r = &m.nodes["n1"];
        assert_eq!(r.alloc[0].round(), 80.0);
        assert_eq!(r.used[0].round(), 20.0);
        assert_eq!(r.used[1].round(), 50.0);
        assert_eq!(r.alloc[2].round(), 50.0);
        assert_eq!(r.used[2].round(), 30.0);
        let p = ResourcePrediction {
            node_name: "n2".into(),
            model_type: "auto(ets)".into(),
            predicted_usage: vec![TimestampedResources {
                cpu_usage: 97.0,
                ..Default::default()
            }],
            upper_bound: vec![TimestampedResources {
                cpu_usage: 99.0,
                ..Default::default()
            }],
            ..Default::default()
        };
        m.apply("forecast.n2", &serde_json::to_vec(&p).unwrap());
        let a = ResourceAlert {
            node_name: "n2".into(),
            kind: "overload".into(),
            resource: "cpu".into(),
            state: apollo_proto::AlertState::Raised as i32,
            message: "cpu predicted 99%".into(),
            ..Default::default()
        };
        m.apply("alert.overload.n2", &serde_json::to_vec(&a).unwrap());
        assert_eq!(m.nodes["n2"].alerts, vec!["overload:cpu".to_string()]);
        // Busiest first.
        assert_eq!(m.sorted()[0].0, "n2");
        m.apply("insight.cluster.n3", b"{not json");
        assert_eq!(m.undecodable, 1);

        let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(140, 30)).unwrap();
        term.draw(|f| m.draw(f, "nats://test")).unwrap();
        let text = buffer_text(term.backend().buffer());
        assert!(text.contains("2 nodes, 1 with alerts"), "{text}");
        assert!(text.contains(" 97 [  0, 99]"), "{text}");
        assert!(text.contains("overload:cpu"), "{text}");
        assert!(text.contains("RAISED  overload:cpu n2"), "{text}");
    }

    #[test]
    fn sparkline_text_keeps_the_latest_points() {
        let v: VecDeque<u64> = (0..=100).step_by(10).collect();
        let s = sparkline_text(&v, 4);
        assert_eq!(s.chars().count(), 4);
        assert!(s.ends_with('█'));
    }
}
