"""TorchServe handler for every model of this project (NW and MHA): a thin wrapper over `contract`.

The archive carries this file, `handlers/contract.py`, the torch-only `training/nn` package, the
checkpoint (weights + config, loaded with weights_only=True) and `model_info.json`.
"""

from __future__ import annotations

import json
import logging
import os
from http import HTTPStatus

import torch
from ts.torch_handler.base_handler import BaseHandler

import training.nn
from handlers.contract import Limits, answer_batch, predict
from training.nn import load_checkpoint

logger = logging.getLogger(__name__)


class AttentionHandler(BaseHandler):
    def initialize(self, context) -> None:
        properties = context.system_properties
        model_dir = properties["model_dir"]
        gpu = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        checkpoint = os.path.join(model_dir, context.manifest["model"]["serializedFile"])
        self.model, _ = load_checkpoint(checkpoint, self.device)
        with open(os.path.join(model_dir, "model_info.json")) as f:
            info = json.load(f)
        self.model_info = {"name": info["name"], "version": info["version"], "run_id": info["run_id"]}
        options = (getattr(context, "model_yaml_config", None) or {}).get("handler", {})
        self.limits = Limits(**{k: int(v) for k, v in options.items() if k in Limits.__dataclass_fields__})
        if self.device.type == "cpu" and "torch_threads" in options:
            # A few threads per worker: idle OpenMP threads spinning beside the frontend cost tail latency.
            torch.set_num_threads(int(options["torch_threads"]))
        step = [0.0] * self.model.config.in_features  # one query, or a one-step sequence
        predict(self.model, [step if info["kind"] == "nw" else [step]])
        self.initialized = True
        # Where the code came from: the archive's own copy, never a repository checkout.
        logger.info(
            "loaded %s version %s on %s; code from %s and %s",
            info["name"],
            info["version"],
            self.device,
            os.path.dirname(os.path.abspath(__file__)),
            os.path.dirname(os.path.abspath(training.nn.__file__)),
        )

    def handle(self, data, context):
        bodies = [row.get("data", row.get("body")) for row in data]
        explain = [context.get_request_header(i, "explain") == "True" for i in range(len(data))]
        answers = answer_batch(bodies, explain, self.model, self.limits, self.model_info)
        responses = []
        for i, (status, body) in enumerate(answers):
            context.set_response_status(status, HTTPStatus(status).phrase, idx=i)
            context.set_response_content_type(i, "application/json")
            context.set_response_header(i, "X-Batch-Size", str(len(data)))
            responses.append(json.dumps(body))
        return responses
