// Wire order, seen by the official SignalR JavaScript client: a worker that
// takes the only module of a run, invokes Started, then awaits the answer to
// its Complete, must get that answer before the Shutdown that ends the run
// (docs/protocol.md §4). It prints what happened, in order, and exits 1 if
// Complete was refused or if Shutdown came before Complete's answer.
// Usage: node order.mjs HUB_URL TOKEN
import * as signalR from "@microsoft/signalr";

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error("usage: node order.mjs HUB_URL TOKEN");
  process.exit(2);
}

const connection = new signalR.HubConnectionBuilder()
  .withUrl(url, { accessTokenFactory: () => token })
  .configureLogging(signalR.LogLevel.Warning)
  .build();

let completeAnswered = false;
let shutdownSeen = false;
const problems = [];

function record(line) {
  console.log(line);
}

connection.on("Assign", async ({ moduleId, attempt }) => {
  record(`assigned ${moduleId} attempt ${attempt}`);
  try {
    await connection.invoke("Started", moduleId, attempt);
    record("started acknowledged");
    await connection.invoke("Complete", {
      moduleId,
      attempt,
      status: "succeeded",
      exitCode: 0,
      outputs: {},
      error: null,
      durationMs: 1,
    });
    completeAnswered = true;
    record("complete acknowledged");
  } catch (error) {
    problems.push(`a call for ${moduleId} attempt ${attempt} was refused: ${error}`);
    record(`refused: ${error}`);
  }
});

connection.on("Shutdown", async (reason) => {
  // The client calls this handler as it parses the record, while the code
  // after `await connection.invoke("Complete")` runs one microtask after
  // the Completion is parsed. Waiting one microtask here too lets an answer
  // parsed before this Shutdown (even from the same frame) be seen, and
  // only such an answer.
  await null;
  shutdownSeen = true;
  record(`shutdown: ${reason}`);
  if (!completeAnswered) problems.push("Shutdown arrived before the answer to Complete");
  await connection.stop();
});

connection.onclose((error) => {
  if (!shutdownSeen) problems.push(`connection closed before Shutdown${error ? `: ${error}` : ""}`);
  for (const problem of problems) console.error(problem);
  process.exit(problems.length ? 1 : 0);
});

try {
  await connection.start();
  const welcome = await connection.invoke("Register", {
    name: "js-order",
    capabilities: ["lang:js"],
    slots: 1,
    version: "interop",
  });
  record(`registered as ${welcome.workerId}`);
} catch (error) {
  console.error(`could not join ${url}: ${error}`);
  process.exit(1);
}
