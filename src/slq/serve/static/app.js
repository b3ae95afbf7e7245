// The search page: one query (text, image, or both) against the server's /search; the text query
// lives in the URL (?q=&index=&k=) so that reloading or sharing a link re-runs it. No framework.
// A server with an API key answers 401: the page asks for the key, keeps it in this tab only
// (sessionStorage, never the URL) and sends it as `Authorization: Bearer KEY`, item images included
// (fetched, then shown from blob: URLs, since an <img> cannot send a header).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), q = $("q"), indexSelect = $("index"), kSelect = $("k");
  const fileInput = $("image"), preview = $("image-preview"), thumb = $("image-thumb");
  const grid = $("results"), status = $("status"), errorBox = $("error"), overlay = $("drop-overlay");
  const lightbox = $("lightbox"), lbImage = $("lightbox-image"), lbText = $("lightbox-text");
  const keyForm = $("key-form"), keyInput = $("api-key"), keyMessage = $("key-message");
  const KEY_ITEM = "slq-api-key";

  let limits = { max_upload_mb: 16, max_text_chars: 2000 };
  const kinds = {};  // index name -> "images" | "texts"
  let queryImage = null;  // a File
  let results = [];
  let current = -1;  // the result shown in the lightbox
  let inflight = null;
  let apiKey = sessionStorage.getItem(KEY_ITEM) || "";
  const itemImages = new Map();  // an item image's URL -> a promise of its blob: URL (with a key only)

  const showError = (message) => { errorBox.textContent = message; errorBox.hidden = !message; };
  const describe = (hit) => hit.captions[0] || hit.text || hit.path || `item ${hit.id}`;
  const make = (tag, className, text) => {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined) element.textContent = text;
    return element;
  };

  // --- the API key ----------------------------------------------------------------------------
  class KeyNeeded extends Error {}

  // fetch() with the key, if one was given; a 401 asks for (another) key and throws KeyNeeded.
  async function request(url, init = {}) {
    const headers = apiKey ? { ...init.headers, Authorization: `Bearer ${apiKey}` } : init.headers;
    const response = await fetch(url, { ...init, headers });
    if (response.status !== 401) return response;
    const body = await response.json().catch(() => ({}));
    askForKey(apiKey ? "That key is wrong; type the server's API key." :
      "This server needs its API key (slq serve --api-key, or SLQ_API_KEY where it runs).");
    throw new KeyNeeded(body.detail || "The server needs its API key.");
  }

  function askForKey(message) {
    apiKey = "";
    sessionStorage.removeItem(KEY_ITEM);
    keyMessage.textContent = `${message} It is kept in this tab only.`;
    keyForm.hidden = false;
    status.textContent = "";
    keyInput.focus();
  }

  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = keyInput.value.trim();
    if (!key) return;
    apiKey = key;
    sessionStorage.setItem(KEY_ITEM, key);
    keyInput.value = "";
    keyForm.hidden = true;
    start();
  });

  // An item image into `image`: its URL as it is, or, with a key, fetched with it and shown as a blob.
  function showItemImage(image, url, wanted = () => true) {
    if (!apiKey) {
      image.src = url;
      return;
    }
    image.removeAttribute("src");
    if (!itemImages.has(url)) {
      itemImages.set(url, request(url)
        .then((response) => (response.ok ? response.blob() : Promise.reject(new Error(`${response.status}`))))
        .then((blob) => URL.createObjectURL(blob)));
    }
    itemImages.get(url).then((src) => wanted() && (image.src = src), () => {});
  }

  function forgetItemImages() {
    for (const src of itemImages.values()) src.then((url) => URL.revokeObjectURL(url), () => {});
    itemImages.clear();
  }

  async function loadIndexes() {
    const response = await request("/indexes");
    const body = await response.json();
    limits = body.limits || limits;
    indexSelect.replaceChildren();
    for (const index of body.indexes) {
      kinds[index.name] = index.kind;
      indexSelect.append(new Option(`${index.name} (${index.items} ${index.kind})`, index.name));
    }
    $("index-field").hidden = body.indexes.length < 2;
  }

  // --- the URL holds the query ----------------------------------------------------------------
  function readUrl() {
    const params = new URLSearchParams(location.search);
    q.value = params.get("q") || "";
    const index = params.get("index");
    if (index && index in kinds) indexSelect.value = index;
    const k = params.get("k");
    if (k && /^\d+$/.test(k)) {
      if (![...kSelect.options].some((option) => option.value === k)) kSelect.append(new Option(k));
      kSelect.value = k;
    }
    return q.value.trim() !== "";
  }

  function writeUrl() {
    const text = q.value.trim();
    const params = new URLSearchParams({ q: text, index: indexSelect.value, k: kSelect.value });
    const url = text ? `${location.pathname}?${params}` : location.pathname;
    if (url !== location.pathname + location.search) history.pushState(null, "", url);
  }

  // --- searching ------------------------------------------------------------------------------
  async function search({ remember = true } = {}) {
    const text = q.value.trim();
    if (!text && !queryImage) {
      showError("Type a text or add an image to search.");
      q.focus();
      return;
    }
    if (text.length > limits.max_text_chars) {
      showError(`The text is ${text.length} characters; at most ${limits.max_text_chars} are read.`);
      return;
    }
    if (remember) writeUrl();
    inflight?.abort();
    const controller = new AbortController();
    inflight = controller;
    showError("");
    document.body.classList.add("busy");
    status.textContent = "Searching…";
    try {
      let response;
      if (queryImage) {
        const data = new FormData();
        if (text) data.set("q", text);
        data.set("image", queryImage);
        data.set("k", kSelect.value);
        data.set("index", indexSelect.value);
        response = await request("/search", { method: "POST", body: data, signal: controller.signal });
      } else {
        const params = new URLSearchParams({ q: text, k: kSelect.value, index: indexSelect.value });
        response = await request(`/search?${params}`, { signal: controller.signal });
      }
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.detail || `The server answered ${response.status}.`);
      render(body);
    } catch (error) {
      if (error.name === "AbortError") return;
      status.textContent = "";
      if (!(error instanceof KeyNeeded)) showError(error.message);
    } finally {
      if (inflight === controller) {
        inflight = null;
        document.body.classList.remove("busy");
      }
    }
  }

  function render(body) {
    forgetItemImages();
    results = body.results;
    const cards = results.map((hit, i) => {
      const item = make("li", "result");
      item.dataset.id = hit.id;
      const card = make("button", "card");
      card.type = "button";
      if (hit.image_url) {
        const image = make("img");
        image.alt = describe(hit);
        image.loading = "lazy";
        image.decoding = "async";
        showItemImage(image, hit.image_url);
        card.append(image);
      } else {
        card.classList.add("text-card");
        card.append(make("p", "text", hit.text));
      }
      const meta = make("span", "meta");
      meta.append(make("span", "rank", `#${i + 1}`), make("span", "score", hit.score.toFixed(3)));
      meta.lastChild.title = "cosine similarity to the query";
      card.append(meta);
      card.addEventListener("click", () => openLightbox(i));
      item.append(card);
      return item;
    });
    grid.replaceChildren(...cards);
    grid.dataset.index = body.index;
    const what = queryImage ? (q.value.trim() ? "image and text" : "image") : "text";
    status.textContent = results.length
      ? `${results.length} results from ${body.index} for the ${what} in ${Math.round(body.ms)} ms` +
        (queryImage ? " (an image query is not kept in the link)" : "")
      : `No results in ${body.index}.`;
  }

  // --- the query image: file picker, drop, paste ------------------------------------------------
  function setImage(file) {
    if (!file) return;
    if (!file.type.startsWith("image/")) {
      showError(`${file.name || "That"} is not an image.`);
      return;
    }
    if (file.size > limits.max_upload_mb * 1048576) {
      showError(`The image is ${(file.size / 1048576).toFixed(1)} MB; at most ${limits.max_upload_mb} MB are accepted.`);
      return;
    }
    if (thumb.src) URL.revokeObjectURL(thumb.src);
    queryImage = file;
    thumb.src = URL.createObjectURL(file);
    $("image-name").textContent = file.name || "pasted image";
    preview.hidden = false;
    search();
  }

  function clearImage() {
    if (thumb.src) URL.revokeObjectURL(thumb.src);
    thumb.removeAttribute("src");
    queryImage = null;
    fileInput.value = "";
    preview.hidden = true;
    fileInput.focus();
  }

  fileInput.addEventListener("change", () => setImage(fileInput.files[0]));
  $("image-clear").addEventListener("click", clearImage);
  const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  document.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    overlay.hidden = false;
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) overlay.hidden = true;
  });
  document.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    overlay.hidden = true;
    setImage(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) {
      event.preventDefault();
      setImage(file);
    }
  });

  // --- the lightbox -------------------------------------------------------------------------
  function openLightbox(i) {
    current = i;
    const hit = results[i];
    lbImage.hidden = !hit.image_url;
    lbText.hidden = Boolean(hit.image_url);
    if (hit.image_url) {
      showItemImage(lbImage, hit.image_url, () => current === i);
      lbImage.alt = describe(hit);
    } else {
      lbImage.removeAttribute("src");
      lbText.textContent = hit.text;
    }
    $("lightbox-title").textContent = hit.path || `Item ${hit.id}`;
    $("lightbox-score").textContent = `#${i + 1} of ${results.length} · score ${hit.score.toFixed(4)} · id ${hit.id}`;
    $("lightbox-captions").replaceChildren(...hit.captions.map((caption) => make("li", "", caption)));
    $("lightbox-prev").disabled = i === 0;
    $("lightbox-next").disabled = i === results.length - 1;
    if (!lightbox.open) lightbox.showModal();
  }

  $("lightbox-close").addEventListener("click", () => lightbox.close());
  $("lightbox-prev").addEventListener("click", () => current > 0 && openLightbox(current - 1));
  $("lightbox-next").addEventListener("click", () => current < results.length - 1 && openLightbox(current + 1));
  lightbox.addEventListener("click", (event) => {
    if (event.target === lightbox) lightbox.close();  // a click on the backdrop
  });
  lightbox.addEventListener("keydown", (event) => {
    if (event.key === "ArrowLeft" && current > 0) openLightbox(current - 1);
    if (event.key === "ArrowRight" && current < results.length - 1) openLightbox(current + 1);
  });
  // Focus goes back to the result last shown, after the browser has restored it to the opener
  // (the result first clicked), which some browsers do after this event.
  lightbox.addEventListener("close", () => setTimeout(() => grid.children[current]?.querySelector("button")?.focus(), 0));

  // --- wiring -------------------------------------------------------------------------------
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  for (const select of [indexSelect, kSelect]) {
    select.addEventListener("change", () => (q.value.trim() || queryImage) && search());
  }
  window.addEventListener("popstate", () => {
    if (readUrl() || queryImage) search({ remember: false });
  });

  function start() {
    loadIndexes()
      .then(() => {
        if (readUrl()) search({ remember: false });
      })
      .catch((error) => error instanceof KeyNeeded || showError(`Cannot reach the server: ${error.message}`));
  }

  start();
})();
