// The sections of the dashboard: each renders its part of GET /dashboard/data into nodes.

import { badge, errorCell, h, jobLink, mb, metric, orNone, setCount, table, when } from "./dom.js";

const BANDS = ["critical", "high", "normal", "low"];

export function renderReplica(d) {
  const leads = d.leader.is_leader;
  return [
    h("span", { class: "muted" }, "served by "),
    h("span", { class: "mono", dataset: { servedBy: d.served_by } }, d.served_by),
    " ",
    badge(leads ? "leader" : "standby", leads ? "leader" : "standby"),
    h("span", { class: "muted" }, ` v${d.version}`),
  ];
}

export function renderLeader(d) {
  const now = Date.parse(d.generated_at);
  const l = d.leader;
  const row = (label, ...value) => [h("dt", {}, label), h("dd", {}, value)];
  return [
    h(
      "dl",
      { class: "facts" },
      row(
        "Leader",
        l.leader_id
          ? h("span", { class: "mono", dataset: { leaderId: l.leader_id } }, l.leader_id)
          : badge("none", "bad"),
        l.is_leader ? [" ", badge("this replica", "leader")] : null,
      ),
      row("Epoch", h("span", { dataset: { epoch: l.epoch } }, l.epoch)),
      row("Since", when(l.since, now)),
      row("Lease expires", when(l.expires_at, now)),
      row(
        "This replica",
        h("span", { class: "mono" }, l.instance_id),
        " ",
        badge(l.is_leader ? "leads" : "standby", l.is_leader ? "leader" : "standby"),
      ),
    ),
    h(
      "p",
      { class: "note" },
      "Only the leader is recorded; other replicas serve the API too but are not listed.",
    ),
  ];
}

export function renderGpus(d) {
  const now = Date.parse(d.generated_at);
  const g = d.gpus;
  setCount("gpus-count", g.gpus.length);
  const out = [];
  if (g.safe_mode) out.push(h("p", { class: "alert" }, "SAFE_MODE is on: no new leases."));
  if (!g.gpus.length) {
    out.push(
      h(
        "p",
        { class: "empty" },
        "No GPUs reported. Workers report their node's GPUs (through NVML, or ORCH_GPU_SIMULATE).",
      ),
    );
  }
  const nodes = new Map();
  for (const gpu of g.gpus) {
    if (!nodes.has(gpu.node)) nodes.set(gpu.node, []);
    nodes.get(gpu.node).push(gpu);
  }
  for (const [node, gpus] of nodes) {
    out.push(
      h(
        "div",
        { class: "node", dataset: { node } },
        h(
          "h3",
          {},
          h("span", { class: "mono" }, node),
          h("span", { class: "muted" }, ` · ${plural(gpus.length, "GPU")} · reported `),
          when(gpus[0].reported_at, now),
        ),
        gpus.map((gpu) => renderGpu(gpu, g.headroom_mb, now)),
      ),
    );
  }
  if (g.waiting.length) {
    out.push(
      h("h3", {}, `Lease requests waiting (${g.waiting.length})`),
      h(
        "ul",
        { class: "leases waiting" },
        g.waiting.map((l) =>
          h(
            "li",
            { dataset: { leaseAgent: l.agent } },
            h("b", {}, l.agent),
            ` ${mb(l.est_vram_mb)} MB × ${l.gpu_count} · ${l.priority} · queued `,
            when(l.queued_at, now),
          ),
        ),
      ),
    );
  }
  return out;
}

function renderGpu(gpu, headroomMb, now) {
  const total = Math.max(gpu.memory_total_mb, 1);
  const pct = (n) => `${Math.min(100, Math.max(0, (100 * n) / total)).toFixed(2)}%`;
  const health = gpu.stale
    ? badge("stale", "bad")
    : gpu.quarantined
      ? badge("quarantined", "bad")
      : badge(gpu.health, gpu.health === "ok" ? "ok" : "bad");
  const temp = gpu.temperature_c === null ? "—" : `${Math.round(gpu.temperature_c)} °C`;
  const util = gpu.utilization_gpu_pct === null ? "—" : `${Math.round(gpu.utilization_gpu_pct)}%`;
  const power = gpu.power_draw_w === null ? "—" : `${Math.round(gpu.power_draw_w)} W`;
  return h(
    "div",
    { class: "gpu", dataset: { node: gpu.node, index: gpu.index } },
    h(
      "div",
      { class: "gpu-head" },
      h("b", {}, `GPU ${gpu.index}`),
      h("span", { class: "gpu-name", title: gpu.uuid || "" }, gpu.name),
      health,
      h("span", { class: "spacer" }),
      metric("temp", temp, { temperature: gpu.temperature_c ?? "" }),
      metric("util", util),
      metric("power", power),
    ),
    h(
      "div",
      {
        class: "bar",
        title:
          `leased ${mb(gpu.leased_mb)} MB, used ${mb(gpu.memory_used_mb)} MB` +
          ` of ${mb(gpu.memory_total_mb)} MB`,
      },
      h("div", { class: "leased", width: pct(gpu.leased_mb) }),
      h("div", { class: "used", width: pct(gpu.memory_used_mb) }),
      headroomMb > 0 ? h("div", { class: "headroom", width: pct(headroomMb) }) : null,
    ),
    h(
      "div",
      { class: "gpu-mem", dataset: { totalMb: gpu.memory_total_mb, leasedMb: gpu.leased_mb } },
      key("k-leased", `leased ${mb(gpu.leased_mb)}`),
      key("k-used", `used ${mb(gpu.memory_used_mb)}`),
      key("k-free", `leasable ${mb(gpu.leasable_mb)}`),
      h("span", { class: "muted" }, ` / ${mb(gpu.memory_total_mb)} MB`),
      headroomMb > 0
        ? key("k-headroom", h("span", { class: "muted" }, `headroom ${mb(headroomMb)}`))
        : null,
    ),
    gpu.error ? h("p", { class: "alert" }, gpu.error) : null,
    gpu.quarantined
      ? h(
          "p",
          { class: "alert quarantine" },
          "quarantined ",
          when(gpu.quarantined_since, now),
          `: ${gpu.quarantine_reason} — no new leases until an admin clears it `,
          h("code", {}, `orchestrator gpu clear ${gpu.node} ${gpu.index}`),
        )
      : null,
    gpu.leases.length
      ? h("ul", { class: "leases" }, gpu.leases.map((l) => renderLease(l, now)))
      : null,
  );
}

function key(kind, label) {
  return [h("span", { class: `key ${kind}` }), label];
}

function plural(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

function renderLease(l, now) {
  return h(
    "li",
    { dataset: { leaseAgent: l.agent } },
    h("b", { class: "agent" }, l.agent),
    ` ${mb(l.est_vram_mb)} MB`,
    l.gpu_count > 1 ? ` × ${l.gpu_count} GPUs` : null,
    ` · ${l.priority}`,
    l.job_id ? [" · job ", jobLink(l.job_id)] : null,
    l.operation ? ` · ${l.operation}` : null,
    " · expires ",
    when(l.expires_at, now),
    h("span", { class: "muted mono", title: "lease token (start)" }, ` ${l.token.slice(0, 8)}`),
  );
}

export function renderQueues(d) {
  const total = { pending: 0, failed: 0, running: 0, dead: 0 };
  const rows = d.queues.map((q) => {
    const running = q.claimed + q.running;
    total.pending += q.pending;
    total.failed += q.failed;
    total.running += running;
    total.dead += q.dead_letter;
    const bands = BANDS.filter((b) => q.by_priority[b]).map((b) =>
      h("span", { class: `band band-${b}`, title: `${b}: waiting` }, `${b} ${q.by_priority[b]}`),
    );
    return h(
      "tr",
      { dataset: { queueType: q.type } },
      h("td", { class: "mono" }, q.type),
      h("td", { class: "num", dataset: { pending: q.pending } }, q.pending),
      h("td", { class: "num" }, q.failed),
      h("td", { class: "num" }, running),
      h("td", { class: `num${q.dead_letter ? " bad" : ""}` }, q.dead_letter),
      h("td", { class: "wrap" }, bands),
    );
  });
  setCount("queues-count", total.pending + total.failed);
  if (rows.length > 1) {
    rows.push(
      h(
        "tr",
        { class: "total" },
        h("td", {}, "all types"),
        [total.pending, total.failed, total.running, total.dead].map((n) =>
          h("td", { class: "num" }, n),
        ),
        h("td", {}),
      ),
    );
  }
  return table(
    ["Type", "Pending", "Retrying", "Running", "Dead", "Waiting by band"],
    rows,
    "No unfinished jobs.",
  );
}

export function renderJobs(d) {
  const now = Date.parse(d.generated_at);
  setCount("jobs-count", d.jobs.length);
  const rows = d.jobs.map((j) =>
    h(
      "tr",
      { dataset: { jobId: j.id, status: j.status } },
      h("td", {}, jobLink(j.id)),
      h("td", { class: "mono" }, j.type),
      h("td", {}, badge(j.status)),
      h("td", {}, j.priority),
      h("td", { class: "num" }, `${j.attempts}/${j.max_attempts}`),
      h("td", { class: "mono clip", title: j.worker || "" }, orNone(j.worker)),
      h("td", {}, when(j.updated_at, now)),
      errorCell(j.error),
    ),
  );
  return table(
    ["Job", "Type", "Status", "Priority", "Attempts", "Worker", "Updated", "Error"],
    rows,
    "No jobs yet.",
  );
}

export function renderDlq(d, isArmed) {
  const now = Date.parse(d.generated_at);
  setCount("dlq-count", d.dlq_total);
  const rows = d.dlq.map((j) =>
    h(
      "tr",
      { dataset: { jobId: j.id } },
      h("td", {}, jobLink(j.id)),
      h("td", { class: "mono" }, j.type),
      h("td", { class: "num" }, `${j.attempts}/${j.max_attempts}`),
      errorCell(j.error),
      h("td", {}, when(j.finished_at, now)),
      h("td", {}, replayButton(j, isArmed(j.id))),
    ),
  );
  const out = [table(["Job", "Type", "Attempts", "Error", "Dead", ""], rows, "Empty.")];
  if (d.dlq_total > d.dlq.length) {
    out.push(
      h(
        "p",
        { class: "note" },
        `The newest ${d.dlq.length} of ${d.dlq_total}; `,
        h("a", { href: "/dlq" }, "GET /dlq"),
        " pages through all.",
      ),
    );
  }
  return out;
}

// Replay is an admin action (issue 6 will require an admin token for it): the first click
// arms the button, the second, within ARM_MS, sends POST /dlq/{id}/replay with the token.
export function replayButton(job, armed) {
  return h(
    "button",
    {
      type: "button",
      class: armed ? "replay armed" : "replay",
      title: armed ? "Click again: it runs again, with fresh attempts" : "Run it again (admin)",
      dataset: { replay: job.id, jobType: job.type, armed: armed ? "1" : "0" },
    },
    armed ? "Confirm replay" : "Replay",
  );
}

export function renderPools(d) {
  setCount("pools-count", d.pools.length);
  const rows = d.pools.map((p) =>
    h(
      "tr",
      { dataset: { pool: p.name } },
      h("td", { class: "mono" }, p.name),
      h("td", {}, badge(p.status)),
      h("td", { class: "mono" }, p.node || h("span", { class: "muted" }, "every node")),
      h(
        "td",
        { class: "num", dataset: { running: p.running, desired: p.desired } },
        `${p.running}/${p.desired}`,
      ),
      h("td", {}, `${p.min_warm}–${p.max_workers} × ${p.concurrency}`),
      h("td", { class: "mono clip", title: p.job_types.join(", ") }, p.job_types.join(", ")),
    ),
  );
  return table(
    ["Pool", "Status", "Node", "Workers", "Bounds × conc", "Job types"],
    rows,
    "No pools. Create one with `orchestrator pools create`.",
  );
}

export function renderWorkers(d) {
  const now = Date.parse(d.generated_at);
  setCount("workers-count", d.workers.filter((w) => w.alive).length);
  const rows = d.workers.map((w) => {
    // Not alive: marked lost by the leader, or silent past the visibility timeout.
    const status = w.alive ? w.status : w.status === "lost" ? "lost" : "silent";
    const running = w.current_jobs.length
      ? w.current_jobs.map((id) => [jobLink(id), " "])
      : h("span", { class: "muted" }, "idle");
    return h(
      "tr",
      { dataset: { workerId: w.id }, class: w.alive ? null : "dim" },
      h("td", { class: "mono clip", title: w.id }, w.id),
      h("td", { class: "mono" }, w.node),
      h("td", { class: "mono" }, orNone(w.pool)),
      h("td", { class: "num" }, orNone(w.pid)),
      h("td", {}, badge(status, w.alive ? status : "bad")),
      h("td", {}, when(w.heartbeat_at, now)),
      h("td", { class: "clip", title: w.job_types.join(", ") }, w.job_types.join(", ")),
      h("td", {}, running),
    );
  });
  return table(
    ["Worker", "Node", "Pool", "PID", "Status", "Heartbeat", "Types", "Current jobs"],
    rows,
    "No workers registered.",
  );
}
