"""The pictures a reviewer wants next to a model: predictions vs truth, attention maps, learning curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .data import Dataset, split_texts  # noqa: E402
from .nn import NadarayaWatson, Seq2Seq, SequenceModel, translate  # noqa: E402


@torch.no_grad()
def nw_predictions(model: NadarayaWatson, data: Dataset) -> Figure:
    """1-D: prediction and truth over the test grid with the training points; n-D: predicted vs actual."""
    model.cpu().eval()
    pred = model(data.test.x)[0].numpy()
    test_x, test_y = data.test.x.numpy(), data.test.y.numpy()
    train_x, train_y = data.train.x.numpy(), data.train.y.numpy()
    fig, ax = plt.subplots(figsize=(6, 4))
    if data.in_features == 1:
        ax.plot(test_x[:, 0], test_y, label="truth")
        ax.plot(test_x[:, 0], pred, label="prediction")
        ax.plot(train_x[:, 0], train_y, "o", alpha=0.5, label="training points")
        ax.set(xlabel="x", ylabel="y")
        ax.legend()
    else:
        ax.scatter(test_y, pred, s=12, alpha=0.7)
        low, high = float(test_y.min()), float(test_y.max())
        ax.plot([low, high], [low, high], "k--", linewidth=1)
        ax.set(xlabel="actual", ylabel="predicted")
    ax.set_title(f"Nadaraya-Watson on {data.name} (test split)")
    fig.tight_layout()
    return fig


@torch.no_grad()
def nw_attention_heatmap(model: NadarayaWatson, data: Dataset) -> Figure:
    """Attention weights, test queries x training keys (the seeds' heatmap)."""
    model.cpu().eval()
    weights = model(data.test.x, need_weights=True)[1].numpy()  # (Q, K)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    image = ax.imshow(weights, cmap="Reds", aspect="auto")
    ax.set(xlabel="training inputs (keys)", ylabel="test inputs (queries)", title="attention weights")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


@torch.no_grad()
def mha_pooling_weights(model: SequenceModel, data: Dataset, n_examples: int = 4) -> Figure:
    """Pooling weights over steps for a few test sequences; for `adding` the marked steps are shown."""
    model.cpu().eval()
    x, lengths = data.test.x[:n_examples], data.test.lengths[:n_examples]
    _, weights = model(x, lengths, need_weights=True)
    fig, axes = plt.subplots(len(x), 1, figsize=(7, 1.6 * len(x)), squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        n = int(lengths[i])
        ax.bar(range(n), weights["pooling"][i, :n].numpy(), color="tab:blue")
        if data.name == "adding":
            for step in torch.nonzero(x[i, :n, 1]).flatten().tolist():
                ax.axvline(step, color="tab:red", linestyle="--", linewidth=1)
        ax.set_ylabel(f"#{i}")
    axes[-1, 0].set_xlabel("step" + (" (red: marked steps)" if data.name == "adding" else ""))
    axes[0, 0].set_title("attention pooling weights over steps")
    fig.tight_layout()
    return fig


def s2s_alignments(model: Seq2Seq, data: Dataset, n_examples: int = 4) -> Figure:
    """Alignment matrices (output characters x input characters) for a few test inputs, one panel each."""
    model.cpu().eval()
    texts, targets = split_texts(data.test.subset(slice(0, n_examples)), data)
    results = translate(model, texts, need_weights=True)
    fig, axes = plt.subplots(1, len(texts), figsize=(4.2 * len(texts), 4), squeeze=False)
    for ax, result, target in zip(axes[0], results, targets):
        ax.imshow(result.weights.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(result.input_tokens)), [c if c != " " else "␣" for c in result.input_tokens])
        ax.set_yticks(range(len(result.output_tokens)), result.output_tokens)
        ax.tick_params(labelsize=7)
        mark = "✓" if result.text == target else f"✗ (truth {target})"
        ax.set_title(f"{result.text} {mark}", fontsize=9)
        ax.set_xlabel("input characters")
    axes[0, 0].set_ylabel("output characters")
    fig.suptitle("decoder attention over the input (alignment)")
    fig.tight_layout()
    return fig


def learning_curve(history: list[dict[str, float]], metric: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    (train,) = ax.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    ax.set(xlabel="epoch", ylabel="train loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    other = ax.twinx()
    (val,) = other.plot(epochs, [row[f"val_{metric}"] for row in history], color="tab:orange", label=f"val {metric}")
    other.set_ylabel(f"validation {metric}")
    ax.legend(handles=[train, val], loc="upper right")
    ax.set_title("learning curve (refit of the best trial)")
    fig.tight_layout()
    return fig
