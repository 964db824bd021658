// The labelling page of `prefenv label`: one pair at a time from /api/next, each answer POSTed
// to /api/label with the page's CSRF token. Everything shown is set with textContent (never as
// HTML), so no text from a run can run as code here.
"use strict";

(() => {
  const POLL_MS = 5000;
  const KEYS = {
    "1": "left", ArrowLeft: "left",
    "2": "right", ArrowRight: "right",
    "3": "equal", "=": "equal",
    "0": "skip", s: "skip", S: "skip",
  };
  const UNDO_KEYS = new Set(["u", "U", "Backspace"]);
  const $ = (id) => document.getElementById(id);
  const state = {
    query: null, // public id of the pair on screen, null when none
    shownAt: null, // performance.now() when both options were on screen
    render: 0, // increases with every pair drawn: late media events of an old pair are ignored
    busy: false, // a request is in flight: keys and clicks wait
    poll: null,
    csrf: document.querySelector('meta[name="csrf-token"]').content,
  };

  class RequestError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // -- talking to the server --------------------------------------------------------------

  async function api(method, path, body) {
    const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (method === "POST") {
      options.headers["Content-Type"] = "application/json";
      options.headers["X-CSRF-Token"] = state.csrf;
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (error) {
      throw new RequestError(0, "the server cannot be reached: is `prefenv label` still running? Retrying every 5 s.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    if (!response.ok) {
      const message = data && data.error ? data.error : `${response.status} ${response.statusText}`;
      throw new RequestError(response.status, message);
    }
    return data;
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
  }

  function showStatus(message) {
    $("status").textContent = message;
    $("status").hidden = !message;
  }

  function clearMessages() {
    $("error").hidden = true;
    showStatus("");
  }

  function setProgress(progress) {
    $("progress").textContent = `${progress.labelled} labelled · ${progress.waiting} waiting`;
  }

  async function loadNext() {
    clearTimeout(state.poll);
    try {
      const data = await api("GET", "/api/next");
      state.csrf = data.csrf;
      $("instructions").textContent = data.instructions;
      setProgress(data.progress);
      if (data.query === null) {
        showWaiting();
      } else {
        show(data.query, data.media);
      }
    } catch (error) {
      showError(error.message);
      if (error.status !== 401) state.poll = setTimeout(loadNext, POLL_MS);
    }
  }

  async function choose(choice) {
    if (state.busy || state.query === null) return;
    state.busy = true;
    const seconds = state.shownAt === null ? null : (performance.now() - state.shownAt) / 1000;
    const query = state.query;
    try {
      await api("POST", "/api/label", { query, choice, response_seconds: seconds });
      clearMessages();
      state.query = null;
      await loadNext(); // its progress shows once the next pair is up and keys work again
    } catch (error) {
      showError(error.message);
      if (error.status >= 400 && error.status !== 401) await loadNext(); // refreshed pair and token
    } finally {
      state.busy = false;
    }
  }

  async function undo() {
    if (state.busy) return;
    state.busy = true;
    try {
      const data = await api("POST", "/api/undo", {});
      clearMessages();
      setProgress(data.progress);
      if (data.media) {
        show(data.query, data.media);
        showStatus("Your last label was taken back: answer this pair again.");
      } else {
        await loadNext();
      }
    } catch (error) {
      showError(error.message);
      if (error.status === 403) await loadNext(); // a restarted server: take its new token
    } finally {
      state.busy = false;
    }
  }

  // -- drawing a pair ---------------------------------------------------------------------

  function showWaiting() {
    stopMedia();
    state.query = null;
    state.shownAt = null;
    delete $("pair").dataset.shown;
    $("pair").hidden = true;
    $("choose-skip").hidden = true;
    $("waiting").hidden = false;
    state.poll = setTimeout(loadNext, POLL_MS);
  }

  function show(query, media) {
    stopMedia();
    state.query = query;
    state.shownAt = null;
    delete $("pair").dataset.shown;
    state.render += 1;
    $("waiting").hidden = true;
    $("pair").hidden = false;
    $("choose-skip").hidden = false;
    $("prompt").hidden = true;
    $("left").replaceChildren();
    $("right").replaceChildren();
    const draw = RENDERERS[media && media.kind];
    if (draw === undefined) {
      showError(`this page cannot show a pair of kind ${JSON.stringify(media && media.kind)}: skip it (0 or S)`);
      markShown(state.render);
      return;
    }
    draw(media, state.render);
  }

  function markShown(render) {
    if (render === state.render && state.shownAt === null) {
      state.shownAt = performance.now();
      $("pair").dataset.shown = String(render); // the label's response time runs from here
    }
  }

  function stopMedia() {
    for (const video of document.querySelectorAll("#pair video")) {
      video.pause();
      video.removeAttribute("src");
      video.load();
    }
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function cellText(cell) {
    if (cell === null || cell === undefined) return "";
    if (Array.isArray(cell)) return cell.map(cellText).join(", ");
    if (typeof cell === "boolean") return cell ? "yes" : "no";
    if (typeof cell === "number") return Number.isInteger(cell) ? String(cell) : String(Math.round(cell * 1000) / 1000);
    if (typeof cell === "object") return JSON.stringify(cell);
    return String(cell);
  }

  function table(columns, rows) {
    const wrapper = element("div", "table-scroll");
    const node = element("table");
    const head = node.createTHead().insertRow();
    for (const column of columns) head.append(element("th", "", column));
    const body = node.createTBody();
    for (const row of rows) {
      const line = body.insertRow();
      for (const cell of row) line.append(element("td", typeof cell === "number" ? "number" : "", cellText(cell)));
    }
    wrapper.append(node);
    return wrapper;
  }

  function clip(name) {
    const url = "/clips/" + encodeURIComponent(name);
    if (name.toLowerCase().endsWith(".gif")) {
      const image = element("img", "clip");
      image.alt = `clip ${name}`;
      const ready = new Promise((resolve) => {
        image.addEventListener("load", () => resolve(true), { once: true });
        image.addEventListener("error", () => resolve(false), { once: true });
      });
      image.src = url;
      return { node: image, video: null, ready };
    }
    const video = element("video", "clip");
    video.muted = true;
    video.defaultMuted = true;
    video.loop = true;
    video.autoplay = true;
    video.playsInline = true;
    video.preload = "auto";
    video.title = "click to pause or play both clips";
    const ready = new Promise((resolve) => {
      video.addEventListener("loadeddata", () => resolve(true), { once: true });
      video.addEventListener("error", () => resolve(false), { once: true });
    });
    video.src = url;
    return { node: video, video, ready };
  }

  function keepInSync(lead, follow) {
    lead.addEventListener("timeupdate", () => {
      if (!follow.seeking && Math.abs(lead.currentTime - follow.currentTime) > 0.1) {
        follow.currentTime = lead.currentTime;
      }
    });
    const toggle = () => {
      const play = lead.paused;
      for (const video of [lead, follow]) {
        if (play) video.play().catch(() => {}); else video.pause();
      }
    };
    lead.addEventListener("click", toggle);
    follow.addEventListener("click", toggle);
  }

  function drawClips(media, render) {
    const left = clip(media.left);
    const right = clip(media.right);
    const caption = media.frames ? `${media.frames} frames at ${media.fps} fps, looping` : "";
    $("left").append(left.node, element("p", "caption", caption));
    $("right").append(right.node, element("p", "caption", caption));
    Promise.all([left.ready, right.ready]).then(([leftOk, rightOk]) => {
      if (render !== state.render) return;
      if (!leftOk || !rightOk) showError("a clip could not be loaded or played in this browser: skip the pair (0 or S)");
      if (left.video && right.video) {
        left.video.currentTime = 0;
        right.video.currentTime = 0;
        // only a blocked autoplay needs the person; an interrupted play() (AbortError) does not
        Promise.all([left.video.play(), right.video.play()]).catch((error) => {
          if (error && error.name === "NotAllowedError") showStatus("Click a clip to play them.");
        });
        keepInSync(left.video, right.video);
      }
      markShown(render);
    });
  }

  function drawText(media, render) {
    const prompts = [media.left_prompt, media.right_prompt];
    if (media.prompt) {
      $("prompt").replaceChildren(element("span", "label", "Prompt"), element("span", "", media.prompt));
      $("prompt").hidden = false;
    }
    ["left", "right"].forEach((side, k) => {
      if (prompts[k]) $(side).append(element("p", "side-prompt", `Prompt: ${prompts[k]}`));
      $(side).append(element("div", "text", media[side]));
    });
    requestAnimationFrame(() => markShown(render));
  }

  function drawSessions(media, render) {
    for (const side of ["left", "right"]) {
      const session = media[side];
      $(side).append(table(media.columns, session.rows));
      $(side).append(element("p", session.left_early ? "caption left-early" : "caption",
        session.left_early ? "The user left during this session." : "The user stayed to the end of this stretch."));
    }
    requestAnimationFrame(() => markShown(render));
  }

  function drawTable(media, render) {
    for (const side of ["left", "right"]) $(side).append(table(media.columns, media[side].rows));
    requestAnimationFrame(() => markShown(render));
  }

  const RENDERERS = { clips: drawClips, text: drawText, sessions: drawSessions, table: drawTable };

  // -- input ------------------------------------------------------------------------------

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (UNDO_KEYS.has(event.key)) {
      event.preventDefault();
      undo();
    } else if (KEYS[event.key] !== undefined) {
      event.preventDefault();
      choose(KEYS[event.key]);
    }
  });
  for (const button of document.querySelectorAll("button[data-choice]")) {
    button.addEventListener("click", () => choose(button.dataset.choice));
  }
  $("undo").addEventListener("click", () => undo());

  loadNext();
})();
