// A muster worker written with the official SignalR JavaScript client, as a
// platform engineer would write one from docs/protocol.md. It registers with
// the capability lang:js, runs what it is assigned with child_process, and
// reports logs, outputs and the result. Usage: node worker.mjs HUB_URL TOKEN
import { spawn } from "node:child_process";
import * as signalR from "@microsoft/signalr";

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error("usage: node worker.mjs HUB_URL TOKEN");
  process.exit(2);
}

const connection = new signalR.HubConnectionBuilder()
  .withUrl(url, { accessTokenFactory: () => token })
  .configureLogging(signalR.LogLevel.Warning)
  .build();

function run(assignment) {
  const [program, ...args] = assignment.shell;
  return new Promise((resolve) => {
    const child = spawn(program, [...args, assignment.command], {
      env: { ...process.env, ...assignment.env, MUSTER_MODULE: assignment.moduleId, MUSTER_WORKER: "js-worker" },
    });
    let stdout = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.on("close", (code) => resolve({ code, stdout }));
  });
}

connection.on("Assign", async (assignment) => {
  const { moduleId, attempt } = assignment;
  const begun = Date.now();
  await connection.invoke("Started", moduleId, attempt);
  const { code, stdout } = await run(assignment);
  await connection.send("Log", moduleId, attempt, "stdout", stdout.trimEnd());
  await connection.invoke("Complete", {
    moduleId,
    attempt,
    status: code === 0 ? "succeeded" : "failed",
    exitCode: code,
    outputs: { answer: "42", runtime: `node-${process.versions.node.split(".")[0]}` },
    error: code === 0 ? null : `exited with code ${code}`,
    durationMs: Date.now() - begun,
  });
});

connection.on("Cancel", (moduleId, attempt, reason) => {
  console.log(`cancel ${moduleId} attempt ${attempt}: ${reason}`);
});

let shuttingDown = false;

connection.on("Shutdown", async (reason) => {
  console.log(`shutdown: ${reason}`);
  shuttingDown = true;
  await connection.stop();
});

connection.onclose((error) => {
  if (shuttingDown) process.exit(0);
  console.error(`connection closed before Shutdown${error ? `: ${error}` : ""}`);
  process.exit(1);
});

try {
  await connection.start();
  const welcome = await connection.invoke("Register", {
    name: "js-worker",
    capabilities: ["lang:js"],
    slots: 1,
    version: "interop",
  });
  console.log(`registered as ${welcome.workerId}, protocol ${welcome.protocolVersion}`);
} catch (error) {
  console.error(`could not join ${url}: ${error}`);
  process.exit(1);
}
