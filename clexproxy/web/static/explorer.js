// The docs page's API Explorer: builds a chat request from the form, POSTs it to /api/chat on this origin
// with the pasted key, and shows the status, the metering headers and the answer (tokens as they stream).
// The key lives in the input only: never stored, never logged, sent only in the call's Authorization
// header; the code shown for the same request names $CLEX_API_KEY instead. Without JS the form stays hidden.
// Signed in (the page carries <meta name="csrf-token">) as an account's user, the key is optional: without
// one the call goes with the session cookie (same origin only) and the CSRF token in X-CSRF-Token, and is
// charged to the account. An operator belongs to no account, so the Explorer asks them for a key. The code
// shown still names $CLEX_API_KEY: a session cannot be pasted into curl.
"use strict";
(() => {
  const SHOWN_HEADERS = ["X-Clex-Credits-Remaining", "x-ratelimit-remaining-requests", "X-Request-Id"];
  const $ = (id) => document.getElementById(id);
  const csrfToken = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  const requestBody = () => {
    const messages = [];
    const system = $("ex-system").value;
    if (system.trim()) messages.push({role: "system", content: system});
    messages.push({role: "user", content: $("ex-user").value});
    const body = {model: $("ex-model").value, messages, stream: $("ex-stream").checked};
    const temperature = $("ex-temperature").value;
    if (temperature !== "") body.temperature = Number(temperature);
    const maxTokens = $("ex-max-tokens").value;
    if (maxTokens !== "") body.max_tokens = Number(maxTokens);
    return body;
  };

  const shellQuote = (text) => "'" + text.replace(/'/g, "'\\''") + "'";

  // A JSON value as a Python literal: JSON strings and numbers are valid Python; true/false/null are not.
  const python = (value, indent) => {
    const pad = "    ".repeat(indent + 1), end = "    ".repeat(indent);
    if (value === null) return "None";
    if (typeof value === "boolean") return value ? "True" : "False";
    if (Array.isArray(value)) {
      if (!value.length) return "[]";
      return "[\n" + value.map((v) => pad + python(v, indent + 1) + ",\n").join("") + end + "]";
    }
    if (typeof value === "object") {
      const entries = Object.entries(value);
      if (!entries.length) return "{}";
      return "{\n" + entries.map(([k, v]) => pad + JSON.stringify(k) + ": " + python(v, indent + 1) + ",\n")
        .join("") + end + "}";
    }
    return JSON.stringify(value);
  };

  const showCode = () => {
    const body = requestBody();
    const url = location.origin + "/v1/chat/completions";
    $("ex-curl").textContent = [
      "curl " + url + (body.stream ? " -N" : "") + " \\",
      '  -H "Authorization: Bearer $CLEX_API_KEY" \\',
      '  -H "Content-Type: application/json" \\',
      "  -d " + shellQuote(JSON.stringify(body, null, 2)),
    ].join("\n");
    const lines = [
      "import os", "", "import requests", "",
      "response = requests.post(",
      "    " + JSON.stringify(url) + ",",
      "    headers={\"Authorization\": f\"Bearer {os.environ['CLEX_API_KEY']}\"},",
      "    json=" + python(body, 1) + ",",
      body.stream ? "    stream=True," : null,
      ")",
      "print(response.status_code, response.headers.get(\"X-Clex-Credits-Remaining\"))",
      body.stream
        ? "for line in response.iter_lines(decode_unicode=True):\n    if line:\n        print(line)"
        : "print(response.json())",
    ];
    $("ex-python").textContent = lines.filter((line) => line !== null).join("\n");
  };

  const showHeaders = (response) => {
    const list = $("ex-headers");
    list.replaceChildren();
    for (const name of SHOWN_HEADERS) {
      const term = document.createElement("dt");
      term.textContent = name;
      const value = document.createElement("dd");
      value.textContent = response.headers.get(name) ?? "–";
      value.dataset.header = name.toLowerCase();
      list.append(term, value);
    }
  };

  const errorText = (body, status) => {
    const error = body && body.error;
    return error && error.message ? `Error ${error.status || status}: ${error.message}` : `Error ${status}`;
  };

  // SSE from a ReadableStream: each `data:` line is a chunk, `[DONE]` the end, `{"error"}` a late failure.
  const readStream = async (response, output, status) => {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    const handle = (line) => {
      if (!line.startsWith("data:")) return;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) {
        status.textContent = errorText(chunk, response.status);
        return;
      }
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) output.textContent += delta.content;
    };
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, {stream: true});
      const lines = buffered.split("\n");
      buffered = lines.pop();
      lines.forEach(handle);
    }
    if (buffered) handle(buffered);
  };

  const send = async (event) => {
    event.preventDefault();
    const key = $("ex-key").value.trim();
    const status = $("ex-status"), output = $("ex-output"), button = $("ex-send");
    $("explorer-result").hidden = false;
    output.textContent = "";
    $("ex-headers").replaceChildren();
    // Without a key, a signed-in account user's session pays; anyone else must paste one.
    const csrf = csrfToken();
    const bySession = !key && csrf !== "" && $("explorer-form").dataset.account !== undefined;
    if (!key && !bySession) {
      status.textContent = csrf
        ? "Operators call with a key: paste one first."
        : "Paste an API key first.";
      $("ex-key").focus();
      return;
    }
    const body = requestBody();
    const headers = {
      "Content-Type": "application/json",
      "Accept": body.stream ? "text/event-stream" : "application/json",
    };
    if (bySession) headers["X-CSRF-Token"] = csrf;
    else headers["Authorization"] = "Bearer " + key;
    button.disabled = true;
    status.textContent = "Sending…";
    try {
      const response = await fetch("/api/chat", {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        credentials: bySession ? "same-origin" : "omit",
        cache: "no-store",
      });
      showHeaders(response);
      const streamed = (response.headers.get("Content-Type") || "").startsWith("text/event-stream");
      if (!response.ok) {
        status.textContent = errorText(await response.json().catch(() => null), response.status);
      } else if (streamed) {
        status.textContent = `${response.status}: streaming…`;
        await readStream(response, output, status);
        if (status.textContent.endsWith("streaming…")) status.textContent = `${response.status}: done`;
      } else {
        const answer = await response.json();
        output.textContent = answer.choices?.[0]?.message?.content ?? "";
        status.textContent = `${response.status}: done`;
      }
    } catch (failure) {
      status.textContent = "The call failed: " + failure.message;
    } finally {
      button.disabled = false;
    }
  };

  document.addEventListener("DOMContentLoaded", () => {
    const form = $("explorer-form");
    if (!form) return;
    form.addEventListener("submit", send);
    form.addEventListener("input", showCode);
    form.addEventListener("change", showCode);
    form.hidden = false;
    $("explorer-code").hidden = false;
    showCode();
  });
})();
