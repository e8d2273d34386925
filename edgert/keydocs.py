"""What each key of model.toml and edgert.toml means, for the reference docs (edgert.refdocs).

The structs in :mod:`edgert.config`, :mod:`edgert.sections` and :mod:`edgert.settings` say each
key's type, bounds and default; this says what it does, keyed by its dotted path (``<name>``
standing for a name the user picks: an input's, a dim's). A key without a meaning here, or a
meaning for a key the structs lack, fails ``tests/test_refdocs.py``.
"""

from __future__ import annotations

__all__ = ["EDGERT_TOML", "MODEL_TOML"]

MODEL_TOML: dict[str, str] = {
    "name": "The model's name: its topic level (`edgert/infer/<name>`) and its name in the "
    "catalogue. Unset: the model directory's name.",
    "version": "The model's own version, echoed in every reply and in the catalogue; bump it "
    "when you retrain.",
    "source": "The ONNX file, relative to the model directory.",
    "description": "What the model does, in the catalogue and `edgert list`.",
    "precision": "The precision `edgert compile` builds in unless `--precision` says otherwise. "
    "fp16 and int8 are checked against the FP32 reference with looser tolerances; int8 needs an "
    "ONNX with Q/DQ nodes.",
    "labels": "Class names in output order, for `top_k` and `on_label` and Home Assistant; or the "
    "name of a file beside model.toml with one label a line.",
    "dims.<name>": "Bounds of the dynamic dim `<name>` (the name the exporter gave it, or one a "
    "`shape` gives it; `edgert inspect` lists them): a fixed size, or min, opt, max. Engines "
    "take any size from min to max and are tuned for opt (default: min). Every dynamic input "
    "dim needs bounds; `edgert init` writes placeholders.",
    "inputs.<name>.kind": "Who provides the input: `request` (a device sends it), `constant` "
    "(`value`), `carried` (a stateful model's output fed back on the stream's next request), "
    "`windowed` (the device sends `chunk` samples; the stream's last `context` samples go "
    "before them).",
    "inputs.<name>.shape": "The input's shape, naming the dims the exporter left unnamed (or "
    "naming two axes alike, so they are one dim with one set of bounds); sizes the ONNX fixes "
    "must stay.",
    "inputs.<name>.range": "The [low, high] range of the seeded random samples the parity check "
    "feeds this input when the model has no `samples/`.",
    "inputs.<name>.format": "How a device sends this input when its message has no MQTT 5 "
    "content type: `raw` bytes, `jpeg`, `png`, `wav`, `npy` or `json`. Only for a model with "
    "one request input.",
    "inputs.<name>.value": "A `constant` input's value, as a TOML number or nested array (e.g. "
    "silero's `sr = 16000`); the parity check feeds it too, since a graph may branch on it.",
    "inputs.<name>.from_output": "A `carried` input: the output fed back as this input on the "
    "stream's next request.",
    "inputs.<name>.initial": "A `carried` input: the value its elements start from on a new or "
    "reset stream (default 0).",
    "inputs.<name>.batch_axis": "A `carried` input: the axis along which several streams' states "
    "are stacked when they run as one batch (default 0; silero's state is `[2, batch, 128]`: 1).",
    "inputs.<name>.context": "A `windowed` input: how many of the previous request's last "
    "samples are put before the new chunk (0 at the start of a stream).",
    "inputs.<name>.chunk": "A `windowed` input: how many samples a device sends per request.",
    "outputs.<name>.shape": "The output's shape, naming its dims as the inputs' (converters "
    'often call the batch axis something else): e.g. `["batch", 4]`.',
    "parity.atol": "Absolute tolerance of the parity check, replacing the precision's own "
    "(fp32 1e-4, fp16 1e-2, int8 5e-2): an output passes where |a - b| <= atol + rtol * |b|.",
    "parity.rtol": "Relative tolerance of the parity check, replacing the precision's own "
    "(fp32 1e-3, fp16 1e-2, int8 5e-2).",
    "preprocess.kind": "What the device sends: `image` (JPEG or PNG bytes) or `audio` "
    "(PCM16 or WAV bytes); the daemon turns it into the input tensor.",
    "preprocess.size": "[height, width] the picture is resized to. Unset: the input's fixed "
    "height and width.",
    "preprocess.resize": "`stretch` to the size, or `letterbox`: keep the aspect and pad (with "
    "`pad_value`); detections' boxes are mapped back to the picture either way.",
    "preprocess.pad_value": "The letterbox border's grey level, in pixel units (0..255) before "
    "`scale`.",
    "preprocess.color": "Channel order the model was trained on: `rgb` or `bgr` (OpenCV-trained "
    "models).",
    "preprocess.layout": "`nchw` or `nhwc`. Unset: `nhwc` when the input's last axis is 3 "
    "(and its second is not), else `nchw`.",
    "preprocess.scale": "Multiplies each pixel (0..255) first: 1/255 = 0.00392156862745098 gives "
    "0..1.",
    "preprocess.mean": "Subtracted per channel after `scale` (e.g. ImageNet's [0.485, 0.456, "
    "0.406]).",
    "preprocess.std": "Divides per channel after `mean` (no zeros).",
    "preprocess.dtype": "The tensor's element type. Unset: the input's.",
    "preprocess.rate": "The model's sample rate in Hz; payloads are not resampled, so a WAV at "
    "another rate is refused.",
    "preprocess.format": "`pcm16`: raw little-endian mono 16-bit samples; `wav`: a mono PCM16 WAV "
    "file at `rate`. Samples become floats in [-1, 1).",
    "postprocess.output": "The output the result is made from. Unset: the model's first output.",
    "postprocess.softmax": "Apply softmax to the output's scores first (for logits); or the "
    "output's name, which then must be `output`'s.",
    "postprocess.top_k": "A classification: the reply's `result` is the k best "
    '`{"label", "score"}`, labels from `labels`; a score that is not a number (NaN) is left out.',
    "postprocess.threshold": 'A binary state: the result is `{"state": score >= threshold, '
    '"score", "label"}`, `label` the state\'s (`on_label` when on; the other label when off, if '
    "there are two). A NaN score (a sensor's NaN reading) gives `state` and `score` null.",
    "postprocess.on_label": "With `threshold`: the label whose score is compared (for a "
    "multi-class output); omit it for a one-value output.",
    "postprocess.detect": "Labelled boxes from a detector's output: `yolov5` (with objectness), "
    "`yolov8` (also YOLO11: `[batch, 4 + classes, boxes]`) or `end2end` (`[N, 6]`, NMS in the "
    'model); the result is `[{"label", "score", "box"}]` in the picture\'s pixels.',
    "postprocess.score_threshold": "With `detect`: boxes scoring below it are dropped "
    "(default 0.25).",
    "postprocess.iou_threshold": "With `detect`: non-maximum suppression drops a box overlapping "
    "a better one of its class by more than this IoU (default 0.45).",
    "postprocess.max_detections": "With `detect`: at most this many boxes per picture, best "
    "first (default 100).",
    "batching.max_batch": "The most requests run as one batch, below the batch dim's max in "
    "`[dims]`. Unset: that max.",
    "batching.max_queue_delay_us": "How long (µs) a partial batch waits for more requests "
    "before it runs; 0 runs what is queued at once.",
    "batching.instances": "Runners of the model side by side, each one inference at a time (on "
    "a CPU each takes its share of the cores).",
    "batching.threads": "CPU threads per instance: 0 gives one instance every core, several "
    "instances the cores divided among them.",
    "state.ttl": "Seconds a stream's state is kept after its last request; past it the next "
    "request starts from the initial state.",
    "state.max_streams": "How many streams keep state at once; past it the least recently used "
    "one is dropped.",
    "homeassistant.kind": "The entity Home Assistant gets for the model: `event` (every result), "
    "`sensor` (the label and score; `none` for a result that names no label, such as a "
    "detector's empty one) or `binary_sensor` (a `threshold`'s state).",
    "homeassistant.name": "The entity's name. Unset: the model's name.",
    "homeassistant.icon": "The entity's icon, e.g. `mdi:account`.",
    "homeassistant.off_delay": "A `binary_sensor`: seconds it stays on after the last on "
    "result, so it cannot stick on (default 30).",
    "homeassistant.device_class": "Home Assistant's device class (e.g. `occupancy`, `sound`, "
    "`motion`): its icon and wording.",
    "tensorrt.workspace_mb": "The TensorRT builder's workspace limit in MiB (an 8 GB Orin Nano "
    "shares its memory with the OS). Unset: TensorRT's default.",
    "tensorrt.optimization_level": "TensorRT's builder optimization level: higher builds longer "
    "and may run faster. Unset: TensorRT's default (3).",
    "tensorrt.dla_core": "Build for this DLA core (AGX Orin and Orin NX only; FP16 or INT8), "
    "layers DLA cannot run falling back to the GPU.",
    "tensorrt.version_compatible": "Build an engine later TensorRT releases can run "
    "(8.6 to 10, 10 to 11, later minors).",
    "tensorrt.hardware_compatible": "Build an engine any desktop Ampere or later GPU (sm_80+) "
    "runs; never on Jetson or DLA.",
}

EDGERT_TOML: dict[str, str] = {
    "broker.url": "The broker as `mqtt://[user:password@]host[:port]` or `mqtts://` (TLS, port "
    "8883); the other `[broker]` keys the file gives apply over it.",
    "broker.host": "The broker's host name or address.",
    "broker.port": "The broker's port.",
    "broker.tls": "Connect over TLS (as `mqtts://` does).",
    "broker.ca_file": "The CA certificate that signed the broker's, for TLS (relative paths are "
    "relative to this file). Unset: the system's CAs.",
    "broker.cert_file": "This daemon's client certificate, for brokers that want one.",
    "broker.key_file": "The client certificate's private key.",
    "broker.username": "The user name the daemon connects as.",
    "broker.password": "Its password; `password_file` keeps it out of this file.",
    "broker.password_file": "A file holding the password (read and stripped), relative to this "
    "file.",
    "broker.client_id": "The MQTT client id; empty: `edgert-<node>`. Keep it stable: the broker "
    "keeps the session (and its queued requests) by it.",
    "broker.protocol": 'MQTT version: 5, or 4 / "3.1.1" / "311" for brokers that only speak '
    "3.1.1 (no Response Topic: replies go to the topic's key).",
    "broker.keepalive": "Seconds between keep-alive pings; the broker drops the connection after "
    "1.5 times this without traffic.",
    "broker.session_expiry": "Seconds the broker keeps the daemon's session, and the requests "
    "queued for it, after a disconnect (MQTT 5).",
    "broker.reconnect_min": "Seconds before the first reconnect attempt; doubled after each "
    "failure up to `reconnect_max`.",
    "broker.reconnect_max": "The longest wait between reconnect attempts, in seconds.",
    "broker.max_queued": "Replies (and other publishes) held while the broker has not "
    "acknowledged them or the connection is down; past it they are dropped and logged.",
    "broker.receive_maximum": "QoS 1 messages in flight each way (MQTT 5 Receive Maximum); at "
    "most `max_queued`.",
    "node.id": "This daemon's node id, in its topics (`edgert/node/<id>/...`) and Home "
    "Assistant's ids. Empty: the host name, reduced to letters, digits, `_` and `-`.",
    "node.prefix": "The first level of every edgert topic.",
    "node.reply_prefix": "The topics replies may go to: a request naming a reply topic outside "
    "it is refused, so a device cannot make the daemon publish elsewhere. Empty: "
    "`<prefix>/reply/`.",
    "node.share_group": "Serve pooled requests through the shared subscription "
    "`$share/<group>/...`, so several daemons split them (MQTT 5 only). Empty: no sharing.",
    "serve.repository": "The model repository: one directory per model (relative paths are "
    "relative to this file). Unset: `./engines`.",
    "serve.models": "Serve only these models of the repository. Empty: every model.",
    "serve.backend": "`auto` (TensorRT where it runs, else ONNX Runtime), `tensorrt` or "
    "`onnxruntime`.",
    "serve.interim_backend": "`onnxruntime`: while a model's TensorRT engine builds (missing, or "
    "stale with `rebuild_stale`), serve it on ONNX Runtime (built and parity-checked first, in "
    "seconds), then swap the engine in between two requests. `none`: the model waits for its "
    "engine (requests get `loading`).",
    "serve.interim_budget_ms": "An interim backend whose measured latency (one sample request at "
    "load) is above this is still served, marked `slow` in the catalogue and logged; requests' "
    "`deadline_ms` still apply.",
    "serve.rebuild_stale": "Rebuild artifacts built for another machine or from an older "
    "model.onnx instead of refusing them.",
    "serve.homeassistant": "Publish Home Assistant device discovery "
    "(`homeassistant/device/<node>/config`).",
    "serve.qos": "QoS of the daemon's request subscriptions; a reply goes at its request's "
    "QoS, at most this.",
    "serve.max_payload": "The largest request payload, in bytes, checked before decoding; "
    "larger ones get `too_large`. Replies are held to it too: one whose raw outputs would pass "
    "it is sent compact (the result alone) when the model has a result, else `too_large`.",
    "serve.max_elements": "The most tensor elements one request may carry, all inputs together; "
    "more get `too_large`.",
    "serve.queue_size": "Requests queued per model; a full queue answers `busy`.",
    "serve.reply_cache": "Answered (reply topic, id) pairs kept, so a repeated request gets its "
    "reply again instead of running twice.",
    "serve.rate_limit": "Requests per second each device (its reply key) may send; past it, "
    "`rate_limited` replies. 0: no limit.",
    "serve.rate_burst": "Requests a device may send at once before `rate_limit` applies. 0: "
    "twice `rate_limit`.",
    "serve.stats_interval": "Seconds between the stats published on `edgert/node/<node>/stats`.",
    "serve.events": "Publish every result on `edgert/node/<node>/events/<model>` too (for Home "
    "Assistant and automations).",
    "serve.hold_while_loading": "Seconds a request for a model still building or loading waits "
    "for it; past it (or at once with 0) it gets `loading` with `retry_after_ms`.",
    "http.listen": "`host:port` for `/health/live`, `/health/ready` and Prometheus `/metrics`, "
    "served from the daemon's event loop (`127.0.0.1` keeps them on this machine). Unset: no "
    "HTTP listener.",
    "sources.name": "The source's name: its events topic (`edgert/node/<node>/events/<name>`) "
    "and its Home Assistant entities. Unique.",
    "sources.model": "The model its pictures or chunks go to.",
    "sources.url": "A camera: a snapshot URL (`http://` or `https://`, JPEG or PNG), or a video "
    "stream (`rtsp://`, `rtsps://`, `file://`, or `http(s)://` with `video = true`). Credentials "
    "in it (`rtsp://user:pass@host/...`) are never logged or published. Give `url` or `stream`.",
    "sources.stream": "A microphone's (or any device's) stream id: the results of requests on "
    "that stream are this source's. Give `url` or `stream`.",
    "sources.interval": "Seconds between snapshot pulls; 0: only when `trigger` fires.",
    "sources.trigger": "An MQTT topic filter: any message on it (a motion sensor, a doorbell) "
    "pulls a snapshot now.",
    "sources.labels": "Only these labels become events. Unset: every label.",
    "sources.min_score": "Results scoring below it are not events.",
    "sources.debounce": "Seconds the same label is not announced again.",
    "sources.timeout": "Seconds a snapshot pull, or a video stream's open or read, may take.",
    "sources.video": "An `http(s)://` url is an MJPEG or HLS video stream, not a snapshot.",
    "sources.fps": "Video: frames per second sampled from the stream for the model (the rest "
    "are decoded and dropped).",
    "sources.transport": "RTSP: `tcp` (interleaved, works through NAT and firewalls) or `udp`.",
    "sources.max_pixels": "Video: a stream with more pixels a frame is refused (use the "
    "camera's sub-stream). Default: 1920 x 1080.",
    "sources.snapshot_interval": "Video: seconds between the annotated snapshots published for "
    "Home Assistant's `image` entity; 0: none.",
    "sources.reconnect_min": "Video: seconds before a dropped stream's first retry; doubling "
    "after each failure.",
    "sources.reconnect_max": "Video: the longest wait between retries, in seconds.",
    "sources.motion.enabled": "Video: run the model only on frames that changed (and a "
    "keep-alive frame); false: on every sampled frame.",
    "sources.motion.width": "Pixels across the small grey copy frames are compared on.",
    "sources.motion.threshold": "Grey levels a pixel must change by to count as changed.",
    "sources.motion.min_area": "Fraction of the (unmasked) frame that must change for the "
    "model to run.",
    "sources.motion.keepalive": "Seconds after which a frame goes to the model even without "
    "change; 0: only on change.",
    "sources.motion.mask": "Regions ignored by the gate (a tree in the wind, a street): "
    "polygons of `[x, y]` points, as fractions of the frame from its top left corner.",
}
