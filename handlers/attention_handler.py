"""TorchServe handler for every model of this project: a thin wrapper over `handlers.contract`.

The archive carries this file, the contract and its adapters, the torch-only `training/nn` package, the
checkpoint (weights + config, loaded with weights_only=True) and `model_info.json`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from http import HTTPStatus

import torch
from ts.torch_handler.base_handler import BaseHandler

import training.nn
from handlers import worker_io
from handlers.contract import Limits, adapter_for, answer_batch
from handlers.errors import WarmUpError
from handlers.metrics import MetricsSink, batch_figures
from handlers.oip import answer_any
from handlers.oip_kinds import oip_kind
from training.nn import load_checkpoint
from training.nn.integrity import verified_checkpoint

logger = logging.getLogger(__name__)
PHRASES = {status.value: status.phrase for status in HTTPStatus}
PER_BATCH_NOISE = "Backend received inference at"  # TorchServe's worker logs this for every batch


def without_per_batch_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(PER_BATCH_NOISE)


class AttentionHandler(BaseHandler):
    def initialize(self, context) -> None:
        # This worker decodes request bodies itself (byte and nesting limits, exact errors); TorchServe's
        # own JSON decoding would fail a whole batch on one hostile body.
        os.environ["TS_DECODE_INPUT_REQUEST"] = "false"
        # One line per batch that the frontend copies into model_log.log: work on every request's path and
        # log churn with nothing in it (the access log has each request). Warnings and errors still pass.
        logging.getLogger().addFilter(without_per_batch_noise)
        properties = context.system_properties
        model_dir = properties["model_dir"]
        gpu = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        with open(os.path.join(model_dir, "model_info.json")) as f:
            info = json.load(f)
        checkpoint = verified_checkpoint(model_dir, context.manifest["model"]["serializedFile"], info)
        model, metadata = load_checkpoint(checkpoint, self.device)
        # The novelty scores of held-out data (none in archives built before it: no novelty metrics then).
        self.novelty_reference = metadata.get("novelty_reference") or []
        self.model_info = {"name": info["name"], "version": info["version"], "run_id": info["run_id"]}
        options = (getattr(context, "model_yaml_config", None) or {}).get("handler", {})
        self.limits = Limits.from_options(options)
        if self.device.type == "cpu" and "torch_threads" in options:
            # A few threads per worker: idle OpenMP threads spinning beside the frontend cost tail latency.
            torch.set_num_threads(int(options["torch_threads"]))
        self.adapter = adapter_for(model, self.limits)
        self.model = self.adapter.model
        self.oip = oip_kind(self.adapter)  # its Open Inference Protocol tensors
        warm_up = answer_batch([self.adapter.example()], [False], self.adapter, self.limits, self.model_info)
        if warm_up[0].status != 200:
            raise WarmUpError(f"the model does not answer its own example: {warm_up[0].body}")
        self.metrics = MetricsSink() if self.limits.metrics else None
        buffered = self.limits.buffered_reads and worker_io.install()
        self.initialized = True
        # Where the code came from: the archive's own copy, never a repository checkout.
        logger.info(
            "loaded %s version %s (sha256 verified) on %s, requests read %s; code from %s and %s",
            info["name"],
            info["version"],
            self.device,
            "through a buffer" if buffered else "field by field",
            os.path.dirname(os.path.abspath(__file__)),
            os.path.dirname(os.path.abspath(training.nn.__file__)),
        )

    def handle(self, data, context):
        started = time.perf_counter()
        bodies = [row.get("data", row.get("body")) for row in data]
        explain = [context.get_request_header(i, "explain") == "True" for i in range(len(data))]
        # A body of OIP tensors ({"inputs": [...]}, POST /v2/models/<name>/infer) is answered in OIP form; with an
        # Inference-Header-Content-Length header, its JSON is followed by binary tensors (handlers/oip_binary.py).
        headers = [context.get_all_request_header(i) for i in range(len(data))]
        answers, explain = answer_any(bodies, explain, self.adapter, self.oip, self.limits, self.model_info, headers)
        if self.metrics:
            seconds = time.perf_counter() - started
            figures = batch_figures(answers, explain, self.model_info["version"], seconds, self.novelty_reference)
            self.metrics.emit(getattr(context, "metrics", None), figures)
        batch_size = str(len(data))
        for i, answer in enumerate(answers):
            context.set_response_status(answer.status, PHRASES[answer.status], idx=i)
            context.set_response_content_type(i, answer.content_type)
            context.set_response_header(i, "X-Batch-Size", batch_size)
            for key, value in answer.headers.items():
                context.set_response_header(i, key, value)
        return [answer.body for answer in answers]
