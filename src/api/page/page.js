'use strict';
// Tandem's page: posts the picked image to POST /predict asking for server-sent events, and
// shows the fast answer, then the refined one when its job completes. `fetch` rather than
// EventSource, which can neither POST nor send an Authorization header.
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = 'tandem.apiKey';
  const TOP_BARS = 5;

  const ui = {
    inputCard: $('input-card'), dropzone: $('dropzone'), preview: $('preview'), dropHint: $('drop-hint'), fileName: $('file-name'),
    camera: $('camera'), picker: $('picker'),
    placeholder: $('placeholder'), result: $('result'), tier: $('tier'), state: $('state'),
    label: $('label'), labelAlt: $('label-alt'), confidence: $('confidence'),
    agreement: $('agreement'), notice: $('notice'), bars: $('bars'),
    modelFast: $('model-fast'), modelRefined: $('model-refined'),
    msFastModel: $('ms-fast-model'), msFastClient: $('ms-fast-client'),
    msRefinedModel: $('ms-refined-model'), msRefinedClient: $('ms-refined-client'),
    error: $('error'), errorTitle: $('error-title'), errorDetail: $('error-detail'), retry: $('retry'),
    keyPanel: $('key-panel'), key: $('api-key'), keyClear: $('key-clear'), keyState: $('key-state'),
  };

  // The request in progress: a new image aborts it, and its late events are ignored.
  let current = null;
  let lastFile = null;
  let previewUrl = null;

  // --- API key, kept in localStorage (which can be unavailable: private modes, policies).
  function store() {
    try { return window.localStorage; } catch { return null; }
  }
  function apiKey() { return ui.key.value.trim(); }
  function showKeyState() { ui.keyState.textContent = apiKey() ? '(set)' : ''; }
  ui.key.value = store()?.getItem(KEY_STORAGE) ?? '';
  showKeyState();
  ui.key.addEventListener('input', () => {
    const s = store();
    if (s) { apiKey() ? s.setItem(KEY_STORAGE, apiKey()) : s.removeItem(KEY_STORAGE); }
    showKeyState();
  });
  ui.keyClear.addEventListener('click', () => {
    ui.key.value = '';
    store()?.removeItem(KEY_STORAGE);
    showKeyState();
    ui.key.focus();
  });

  // --- Picking an image: camera, picker, drag and drop, paste.
  for (const input of [ui.camera, ui.picker]) {
    input.addEventListener('change', () => {
      const file = input.files && input.files[0];
      // Cleared so that picking the same file again still fires `change`.
      input.value = '';
      if (file) classify(file);
    });
  }
  ui.dropzone.addEventListener('dragover', (e) => {
    e.preventDefault();
    e.dataTransfer.dropEffect = 'copy';
    ui.dropzone.classList.add('dragging');
  });
  ui.dropzone.addEventListener('dragleave', () => ui.dropzone.classList.remove('dragging'));
  ui.dropzone.addEventListener('drop', (e) => {
    e.preventDefault();
    ui.dropzone.classList.remove('dragging');
    const file = e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) classify(file);
    else showError('Nothing to classify', 'Drop an image file (a photo from your files, not a link).');
  });
  // A file dropped beside the zone would otherwise make the browser navigate away to it.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());
  document.addEventListener('paste', (e) => {
    const item = [...(e.clipboardData?.items ?? [])].find((i) => i.kind === 'file' && i.type.startsWith('image/'));
    const file = item?.getAsFile();
    if (file) classify(file);
  });
  ui.retry.addEventListener('click', () => { if (lastFile) classify(lastFile); });

  // --- One image, start to end.
  async function classify(file) {
    current?.abort();
    const run = new AbortController();
    current = run;
    lastFile = file;
    showPreview(file);
    resetResult();
    const started = performance.now();
    const headers = { 'Accept': 'text/event-stream', 'Content-Type': file.type || 'application/octet-stream' };
    if (apiKey()) headers['Authorization'] = 'Bearer ' + apiKey();
    setState('Sending…', true);
    ui.placeholder.hidden = true;

    let response;
    try {
      response = await fetch('predict', { method: 'POST', body: file, headers, signal: run.signal, cache: 'no-store' });
    } catch (err) {
      if (run.signal.aborted) return;
      return showError('Network error', 'The service could not be reached (' + describe(err) + '). Check your connection and try again.', { retry: true });
    }
    if (run !== current) return;
    if (!response.ok) return showHttpError(response, run);

    const seen = { started, final: false, fast: null };
    const type = response.headers.get('Content-Type') || '';
    try {
      if (!type.startsWith('text/event-stream')) {
        // A proxy that does not pass the stream through: the plain JSON answer, if it is one.
        const body = await response.json();
        onFast(body, seen);
        if (body.job_id) showNotice('The refined answer cannot be followed here: the response was not an event stream.');
        return settle(run);
      }
      for await (const event of readEvents(response.body)) {
        if (run !== current) return;
        onEvent(event, seen);
        if (seen.final) break;
      }
    } catch (err) {
      if (run.signal.aborted || run !== current) return;
      return showError('Connection lost', 'The answer stopped arriving (' + describe(err) + ').', { retry: true });
    }
    if (run !== current) return;
    if (!seen.final) {
      if (seen.fast) showNotice('The stream ended before the refined answer arrived. The fast answer above stands.');
      else showError('No answer', 'The service closed the stream without an answer.', { retry: true });
    }
    settle(run);
  }

  function settle(run) {
    if (run === current) { ui.result.setAttribute('aria-busy', 'false'); current = null; }
  }

  function describe(err) {
    return (err && err.message) ? err.message : String(err);
  }

  // Server-sent events from a fetch body: https://html.spec.whatwg.org/multipage/server-sent-events.html
  async function* readEvents(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let event = { type: '', data: [], id: null };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
        for (;;) {
          const end = buffer.search(/[\r\n]/);
          // A lone \r at the end may be the first half of \r\n: wait for the next chunk.
          if (end < 0 || (end === buffer.length - 1 && buffer[end] === '\r' && !done)) break;
          const line = buffer.slice(0, end);
          buffer = buffer.slice(buffer[end] === '\r' && buffer[end + 1] === '\n' ? end + 2 : end + 1);
          if (line === '') {
            if (event.data.length) yield { type: event.type || 'message', data: event.data.join('\n'), id: event.id };
            event = { type: '', data: [], id: null };
            continue;
          }
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? '' : line.slice(colon + 1);
          if (text.startsWith(' ')) text = text.slice(1);
          if (field === 'event') event.type = text;
          else if (field === 'data') event.data.push(text);
          else if (field === 'id') event.id = text;
        }
        if (done) return;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  function onEvent(event, seen) {
    let body;
    try { body = JSON.parse(event.data); } catch {
      throw new Error('an unreadable "' + event.type + '" event');
    }
    switch (event.type) {
      case 'fast': return onFast(body, seen);
      case 'queued': return setState('Queued for the accurate model…', true, 'queued');
      case 'running':
        return setState(body.attempts > 1 ? 'Refining (attempt ' + body.attempts + ')…' : 'Refining…', true, 'running');
      case 'completed': seen.final = true; return onRefined(body, seen);
      case 'failed':
        seen.final = true;
        setState('Refinement failed', false, 'failed');
        return showError('The accurate model failed', sentence(capitalized(body.error || 'The job failed')) + ' The fast answer still stands.');
      case 'canceled':
        seen.final = true;
        setState('Refinement canceled', false, 'canceled');
        return showError('The refinement was canceled', 'The job was canceled before the accurate model answered. The fast answer still stands.');
      case 'error':
        seen.final = true;
        setState('Not followed', false, 'error');
        return showError('The refined answer cannot be followed', errorText(body) + ' The fast answer still stands.');
      default: return; // A kind of event this page does not know yet.
    }
  }

  function onFast(body, seen) {
    const sync = body.sync;
    if (!sync) throw new Error('a fast answer without `sync`');
    seen.fast = sync;
    seen.fastMs = performance.now() - seen.started;
    ui.result.hidden = false;
    ui.result.dataset.tier = 'fast';
    ui.result.dataset.classIndex = String(sync.class_index);
    ui.result.dataset.fastClassIndex = String(sync.class_index);
    ui.tier.textContent = 'fast';
    showAnswer(sync);
    ui.modelFast.textContent = modelName(sync.model);
    ui.msFastModel.textContent = ms(sync.inference_ms);
    ui.msFastClient.textContent = ms(seen.fastMs);
    if (body.job_id) {
      ui.result.dataset.jobId = body.job_id;
      setState('Queued for the accurate model…', true, 'queued');
      ui.msRefinedClient.textContent = '…';
      ui.msRefinedModel.textContent = '…';
    } else {
      seen.final = true;
      setState('Fast answer only', false, 'no-job');
      showNotice('No refined answer this time: ' + (body.async_error || 'the job was not queued') + '.');
    }
    // Where the answer starts low on the screen (a short window), bring it into view.
    if (ui.result.getBoundingClientRect().top > window.innerHeight * 0.6) {
      ui.result.scrollIntoView({ block: 'start', behavior: 'smooth' });
    }
  }

  function onRefined(job, seen) {
    const result = job.result;
    if (!result) throw new Error('a completed job without `result`');
    const refinedMs = performance.now() - seen.started;
    ui.result.hidden = false;
    ui.result.dataset.tier = 'refined';
    ui.result.dataset.classIndex = String(result.class_index);
    ui.tier.textContent = 'refined';
    showAnswer(result);
    setState('Refined after ' + ms(refinedMs), false, 'completed');
    const fast = job.sync || seen.fast;
    const agrees = job.agrees_with_sync;
    ui.agreement.hidden = false;
    ui.agreement.dataset.agrees = String(agrees);
    ui.agreement.textContent = agrees
      ? '✓ Same answer as the fast model (' + pct(fast.score) + ' sure).'
      : 'Changed: the fast model said “' + primary(fast.label) + '” (' + pct(fast.score) + ').';
    ui.modelRefined.textContent = modelName(result.model);
    ui.msRefinedModel.textContent = ms(job.inference_ms ?? result.inference_ms);
    ui.msRefinedClient.textContent = ms(refinedMs);
    ui.result.classList.remove('landed');
    void ui.result.offsetWidth; // Restarts the animation.
    ui.result.classList.add('landed');
  }

  function showAnswer(answer) {
    ui.label.textContent = primary(answer.label);
    ui.label.dataset.label = answer.label;
    const others = answer.label.split(',').slice(1).map((s) => s.trim()).filter(Boolean);
    ui.labelAlt.textContent = others.length ? 'also: ' + others.join(', ') : '';
    ui.confidence.textContent = pct(answer.score);
    ui.bars.replaceChildren(...(answer.top_k || []).slice(0, TOP_BARS).map(bar));
  }

  function bar(cls) {
    const li = document.createElement('li');
    li.className = 'bar';
    const name = document.createElement('span');
    name.className = 'bar-name';
    name.textContent = primary(cls.label);
    name.title = cls.label;
    const value = document.createElement('span');
    value.className = 'bar-value';
    value.textContent = pct(cls.score);
    const track = document.createElement('span');
    track.className = 'bar-track';
    track.setAttribute('aria-hidden', 'true');
    const fill = document.createElement('span');
    fill.className = 'bar-fill';
    // Through the CSSOM, which the page's Content-Security-Policy allows (style attributes it does not).
    fill.style.width = Math.max(0, Math.min(100, cls.score * 100)).toFixed(1) + '%';
    track.append(fill);
    li.append(name, value, track);
    return li;
  }

  async function showHttpError(response, run) {
    const status = response.status;
    let code = '';
    let message = '';
    try {
      const text = await response.text();
      try {
        const body = JSON.parse(text);
        code = body?.error?.code ?? '';
        message = body?.error?.message ?? text;
      } catch { message = text.trim().slice(0, 300); }
    } catch { /* the body could not be read: the status says enough */ }
    if (run !== current) return;
    const detail = capitalized(message || response.statusText || 'no details') + (code ? ' (' + code + ')' : '');
    let title;
    let retry = false;
    if (status === 413) title = 'That file is too large';
    else if (status === 415 || (status === 400 && /image|format/.test(code))) title = 'That file is not an image the service can read';
    else if (status === 401) {
      title = apiKey() ? 'The API key was not accepted' : 'This service needs an API key';
      ui.keyPanel.open = true;
    } else if (status === 429) { title = 'The service is busy'; retry = true; }
    else if (status === 503 || status === 408) { title = 'The service cannot answer right now'; retry = true; }
    else if (status >= 500) { title = 'The service had a problem'; retry = true; }
    else title = 'The request was refused';
    showError(title, detail + ' — HTTP ' + status + '.', { retry, status, code });
    settle(run);
  }

  function errorText(body) {
    const e = body && body.error;
    if (e && typeof e === 'object') return capitalized(e.message || 'Unknown error') + (e.code ? ' (' + e.code + ')' : '') + '.';
    return 'Unknown error.';
  }

  // --- Display helpers.
  function showPreview(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    ui.preview.src = previewUrl;
    ui.preview.alt = 'The image being classified' + (file.name ? ': ' + file.name : '');
    ui.preview.hidden = false;
    ui.dropHint.hidden = true;
    ui.dropzone.dataset.state = 'image';
    ui.inputCard.classList.add('has-image');
    ui.fileName.hidden = !file.name;
    ui.fileName.textContent = file.name ? file.name + ' · ' + size(file.size) : '';
  }
  // A picked file the browser cannot show (not an image) keeps the drop hint instead.
  ui.preview.addEventListener('error', () => {
    if (!ui.preview.getAttribute('src')) return;
    ui.preview.hidden = true;
    ui.dropHint.hidden = false;
    ui.dropzone.dataset.state = 'empty';
    ui.inputCard.classList.remove('has-image');
  });

  function resetResult() {
    ui.error.hidden = true;
    ui.retry.hidden = true;
    ui.result.hidden = true;
    ui.result.setAttribute('aria-busy', 'true');
    ui.result.classList.remove('landed');
    for (const key of ['tier', 'classIndex', 'fastClassIndex', 'jobId', 'state']) delete ui.result.dataset[key];
    ui.agreement.hidden = true;
    ui.notice.hidden = true;
    ui.bars.replaceChildren();
    ui.modelFast.textContent = '';
    ui.modelRefined.textContent = '';
    for (const cell of [ui.msFastModel, ui.msFastClient, ui.msRefinedModel, ui.msRefinedClient]) cell.textContent = '–';
  }

  function setState(text, busy, state) {
    ui.state.textContent = text;
    ui.state.classList.toggle('busy', busy);
    if (state) ui.result.dataset.state = state;
  }

  function showError(title, detail, { retry = false, status = 0, code = '' } = {}) {
    ui.placeholder.hidden = true;
    ui.error.hidden = false;
    ui.error.dataset.status = String(status);
    ui.error.dataset.code = code;
    ui.errorTitle.textContent = title;
    ui.errorDetail.textContent = detail;
    ui.retry.hidden = !(retry && lastFile);
    if (ui.result.hidden) ui.state.classList.remove('busy');
    ui.error.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  }

  function showNotice(text) {
    ui.notice.hidden = false;
    ui.notice.textContent = text;
  }

  function capitalized(text) {
    const t = String(text);
    return t.charAt(0).toUpperCase() + t.slice(1);
  }
  function sentence(text) {
    const t = String(text).trim();
    return /[.!?]$/.test(t) ? t : t + '.';
  }
  // "tree frog, tree-frog" → "tree frog": ImageNet labels list synonyms after a comma.
  function primary(label) { return String(label).split(',')[0].trim() || String(label); }
  function modelName(file) { return String(file || '').replace(/\.onnx$/i, ''); }
  function pct(score) {
    return (Number(score) * 100).toFixed(1) + '%';
  }
  function ms(value) {
    const v = Number(value);
    if (!Number.isFinite(v)) return '–';
    if (v >= 1000) return (v / 1000).toFixed(2) + ' s';
    return (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + ' ms';
  }
  function size(bytes) {
    if (bytes >= 1 << 20) return (bytes / (1 << 20)).toFixed(1) + ' MB';
    if (bytes >= 1 << 10) return Math.round(bytes / (1 << 10)) + ' KB';
    return bytes + ' bytes';
  }
})();
