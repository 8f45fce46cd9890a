"""The serving benchmark's anchor: a bare TorchServe handler over the same checkpoint.

It trusts its input (no validation, no per-request errors, no model metadata): the least a handler
can do and still answer. Archived by benchmarks/serving.py, never served in production.
"""

import json
import os

import torch
from torch import nn
from ts.torch_handler.base_handler import BaseHandler

from training.nn import load_checkpoint


class BaselineHandler(BaseHandler):
    def initialize(self, context) -> None:
        model_dir = context.system_properties["model_dir"]
        self.model, _ = load_checkpoint(os.path.join(model_dir, context.manifest["model"]["serializedFile"]))
        options = (getattr(context, "model_yaml_config", None) or {}).get("handler", {})
        if "torch_threads" in options:  # the same worker settings as the handler it is compared with
            torch.set_num_threads(int(options["torch_threads"]))
        self.initialized = True

    @torch.no_grad()
    def handle(self, data, context):
        bodies = [row.get("data", row.get("body")) for row in data]
        bodies = [json.loads(b) if isinstance(b, (bytes, bytearray, str)) else b for b in bodies]
        counts = [len(b["instances"]) for b in bodies]
        instances = [torch.tensor(x, dtype=torch.float32) for b in bodies for x in b["instances"]]
        if instances[0].dim() < 2:  # rows (NW): a number or a list of numbers; sequences are lists of steps
            out = self.model(torch.stack(instances).reshape(len(instances), -1))[0]
        else:
            lengths = torch.tensor([len(x) for x in instances])
            out = self.model(nn.utils.rnn.pad_sequence(instances, batch_first=True), lengths)[0]
        results, start = out.tolist(), 0
        responses = []
        for n in counts:
            responses.append(json.dumps({"predictions": results[start : start + n]}))
            start += n
        return responses
