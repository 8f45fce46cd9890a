"""A registered version's model card: its MLflow description (markdown), saying what it predicts, the input it
takes with an example request, the data and split it was tuned on, its validation and test metrics, its limits.

`render(card)` is pure: plain data in, markdown out. `card_for(...)` gathers that data from the refit model and
its data set. The example request is made much as the handler's adapters make theirs (`example()` in
handlers/*.py), which the training package does not import; the handler's limits are stated as its defaults
(training/nn/bounds.py). Its last section, the registry's, says who registered the version, and gains a line each
time `@champion` moves to it (`note_champion`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.data.datasets import Dataset
from training.data.tables import FileDataset
from training.nn import FAMILIES, model_kind
from training.nn.bounds import MAX_INSTANCES  # the handler's default
from training.tracking.families import listed, tracking_family_of

MAX_CHARS = 5000  # MLflow's SQL stores hold a version's description in a VARCHAR(5000)


@dataclass
class ModelCard:
    name: str  # the registered model, and the URL path it is served under
    kind: str  # nw, mha, s2s, pixel
    task: str  # regression, classification, translation
    classes: list  # classification: the label of each class
    instance: str  # what one instance is, in words
    example: dict  # a request body
    data: dict[str, object]  # what it was tuned on: data set or file, digest, rows, target
    splits: dict[str, int]  # train / validation / test rows
    protocol: str  # "holdout" or "cv<k>"
    validation: dict[str, float]
    test: dict[str, float]
    limits: list[str]
    registered_by: str = ""  # registry.actor() of the conclusion that registered it


# the card as markdown


def render(card: ModelCard) -> str:
    family = FAMILIES[card.kind].title if card.kind in FAMILIES else card.kind
    lines = [f"# {card.name}: {card.task}, {family} (`{card.kind}`)", "", predicts(card), "", "## Input", ""]
    lines += [f"One instance: {card.instance}. Example request body (`POST /predictions/{card.name}`):", ""]
    lines += ["```json", json.dumps(card.example), "```", "", "## Data", ""]
    lines += [f"- {key}: {value}" for key, value in card.data.items()]
    lines += ["- split: " + ", ".join(f"{split} {n}" for split, n in card.splits.items()), f"- {selection(card)}"]
    lines += ["", "## Metrics", "", "| metric | validation | test |", "|---|---|---|"]
    for metric in dict.fromkeys([*card.validation, *card.test]):
        lines.append(f"| {metric} | {number(card.validation.get(metric))} | {number(card.test.get(metric))} |")
    lines += ["", "## Limits", "", *[f"- {limit}" for limit in card.limits]]
    lines += ["", "## Registry", "", f"- registered by {card.registered_by or 'unknown'}"]
    text = "\n".join(lines) + "\n"
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 2] + "…\n"


def predicts(card: ModelCard) -> str:
    if card.task == "classification":
        return f"Predicts one of {len(card.classes)} classes: {listed(card.classes)}, with their probabilities."
    if card.task == "translation":
        return "Translates a string character by character (seq2seq), with the attention alignment on request."
    return f"Predicts a number ({card.task}) for each instance."


def selection(card: ModelCard) -> str:
    if card.protocol.startswith("cv"):
        return f"selected by {card.protocol[2:]}-fold cross-validation on train+validation, refit on both"
    return "selected on the validation split, refit on train; tested once on the test split"


def number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


# the card's facts, from the model and its data


def card_for(
    model: torch.nn.Module,
    data: Dataset,
    *,
    name: str,
    protocol: str,
    validation: dict[str, float],
    test: dict[str, float],
    registered_by: str = "",
) -> ModelCard:
    labels = getattr(model.config, "class_labels", None) or list(range(data.n_classes))
    return ModelCard(
        name=name,
        kind=model_kind(model),
        task=data.task,
        classes=list(labels) if data.task == "classification" else [],
        instance=tracking_family_of(model).instance(model.config),
        example=tracking_family_of(model).example(model.config, data),
        data=data_facts(data),
        splits={"train": len(data.train), "validation": len(data.val), "test": len(data.test)},
        protocol=protocol,
        validation=validation,
        test=test,
        limits=[f"at most {MAX_INSTANCES} instances per request (the handler's default)"]
        + tracking_family_of(model).limits(model.config, data),
        registered_by=registered_by,
    )


def data_facts(data: Dataset) -> dict[str, object]:
    if not isinstance(data, FileDataset):
        return {"data set": f"`{data.name}` (built in)"}
    return {
        "file": f"`{data.source}`",
        "sha256": f"`{data.digest}`",
        "rows": len(data.frame) if data.frame is not None else "",
        "target": f"`{data.target}`",
    }


# MLflow


def trial_validation(run_id: str | None, metric: str, value: float) -> dict[str, float]:
    """A trial's validation metrics as its run recorded them (`best_val_*`); its objective value alone without one."""
    try:
        metrics = mlflow.get_run(run_id).data.metrics if run_id else {}
    except MlflowException:  # the trial's run was deleted since
        metrics = {}
    found = {k.removeprefix("best_val_"): v for k, v in metrics.items() if k.startswith("best_val_")}
    return found or {metric: value}


def describe_version(name: str, version: str, card: ModelCard) -> None:
    MlflowClient().update_model_version(name, version, description=render(card))


def note_champion(client: MlflowClient, name: str, version: str) -> None:
    """Add to the version's card who made it `@champion`, and when (its `champion_by`/`champion_at` tags)."""
    found = client.get_model_version(name, version)
    line = f"- @champion since {found.tags.get('champion_at', '?')}, moved by {found.tags.get('champion_by', '?')}"
    text = (found.description or "").rstrip("\n") + "\n" + line + "\n"
    client.update_model_version(name, version, description=text[-MAX_CHARS:] if len(text) > MAX_CHARS else text)
