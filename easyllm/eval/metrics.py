"""Classification metrics as small pure functions: accuracy, per-class P/R/F1, macro-F1.

No scikit-learn needed (it is not a dependency); the conventions follow it: a class never
predicted has precision 0, one never seen has recall 0, and macro-F1 averages the classes that
occur in the true or the predicted labels (a class absent from both says nothing about the model).

>>> truth, predicted = ["a", "a", "b"], ["a", "b", "b"]
>>> report = ClassificationReport.from_predictions(truth, predicted, labels=["a", "b"])
>>> report.accuracy, report.macro_f1
(0.6666666666666666, 0.6666666666666666)
>>> report.as_metrics()["confusion/a/b"]  # one true "a" predicted as "b"
1
"""

from __future__ import annotations

import html
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

Matrix = list[list[int]]


def confusion_matrix(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable]
) -> Matrix:
    """Counts: row = true label, column = predicted label, both in the order of `labels`.

    >>> confusion_matrix(["a", "b", "b"], ["a", "a", "b"], labels=["a", "b"])
    [[1, 0], [1, 1]]
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(y) for y in (*y_true, *y_pred) if y not in index})
    if unknown:
        raise ValueError(f"label(s) {unknown} are not in labels={list(labels)}")
    matrix = [[0] * len(labels) for _ in labels]
    for true, pred in zip(y_true, y_pred):
        matrix[index[true]][index[pred]] += 1
    return matrix


def accuracy(matrix: Matrix) -> float:
    """Share of correct predictions (the diagonal); 0.0 for no examples.

    >>> accuracy([[1, 0], [1, 1]])
    0.6666666666666666
    """
    total = sum(map(sum, matrix))
    return sum(matrix[i][i] for i in range(len(matrix))) / total if total else 0.0


def precision_recall_f1(matrix: Matrix) -> tuple[list[float], list[float], list[float]]:
    """Per-class precision, recall and F1; a zero denominator gives 0.0.

    >>> precision_recall_f1([[1, 0], [1, 1]])
    ([0.5, 1.0], [1.0, 0.5], [0.6666666666666666, 0.6666666666666666])
    """
    size = len(matrix)
    predicted = [sum(matrix[r][c] for r in range(size)) for c in range(size)]
    actual = [sum(row) for row in matrix]
    precision = [_ratio(matrix[i][i], predicted[i]) for i in range(size)]
    recall = [_ratio(matrix[i][i], actual[i]) for i in range(size)]
    f1 = [_ratio(2 * p * r, p + r) for p, r in zip(precision, recall)]
    return precision, recall, f1


def macro_f1(matrix: Matrix) -> float:
    """Unweighted mean F1 over the classes that were true or predicted at least once.

    >>> macro_f1([[2, 0, 0], [0, 0, 0], [1, 0, 1]])  # class 2 of 3 never occurs: not averaged
    0.7333333333333334
    """
    size = len(matrix)
    _, _, f1 = precision_recall_f1(matrix)
    seen = [i for i in range(size) if sum(matrix[i]) or sum(matrix[r][i] for r in range(size))]
    return sum(f1[i] for i in seen) / len(seen) if seen else 0.0


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


@dataclass(frozen=True)
class ClassificationReport:
    """A confusion matrix with its labels, and everything derived from it.

    Prints as a text table, renders as an HTML table in notebooks, flattens to the float
    metrics `ModelRunner.evaluate()` returns (`as_metrics`) and is rebuilt from them
    (`from_metrics`), so metrics.json holds the whole report.
    """

    labels: tuple[str, ...]
    matrix: Matrix

    @classmethod
    def from_predictions(
        cls, y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable]
    ) -> ClassificationReport:
        return cls(tuple(str(label) for label in labels), confusion_matrix(y_true, y_pred, labels))

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float]) -> ClassificationReport:
        """Rebuild the report from `as_metrics()` output (e.g. read back from metrics.json)."""
        labels = tuple(
            key.removeprefix("support/") for key in metrics if key.startswith("support/")
        )
        if not labels:
            raise ValueError(
                "these metrics hold no 'support/<label>' keys: they are not a classification report"
            )
        matrix = [[int(metrics.get(f"confusion/{t}/{p}", 0)) for p in labels] for t in labels]
        return cls(labels, matrix)

    @property
    def accuracy(self) -> float:
        return accuracy(self.matrix)

    @property
    def macro_f1(self) -> float:
        return macro_f1(self.matrix)

    @property
    def support(self) -> list[int]:
        return [sum(row) for row in self.matrix]

    def as_metrics(self) -> dict[str, float]:
        """Flat keys: accuracy, macro_f1, precision|recall|f1|support/<label>, confusion/<t>/<p>."""
        precision, recall, f1 = precision_recall_f1(self.matrix)
        metrics: dict[str, float] = {"accuracy": self.accuracy, "macro_f1": self.macro_f1}
        for i, label in enumerate(self.labels):
            metrics[f"precision/{label}"] = precision[i]
            metrics[f"recall/{label}"] = recall[i]
            metrics[f"f1/{label}"] = f1[i]
            metrics[f"support/{label}"] = self.support[i]
        for i, true in enumerate(self.labels):
            for j, pred in enumerate(self.labels):
                metrics[f"confusion/{true}/{pred}"] = self.matrix[i][j]
        return metrics

    def __str__(self) -> str:
        precision, recall, f1 = precision_recall_f1(self.matrix)
        width = max(8, *(len(label) for label in self.labels))
        lines = [
            f"accuracy {self.accuracy:.3f}, macro-F1 {self.macro_f1:.3f}",
            f"{'label':<{width}}  precision  recall     f1  support",
        ]
        for i, label in enumerate(self.labels):
            scores = f"{precision[i]:9.3f}  {recall[i]:6.3f}  {f1[i]:5.3f}  {self.support[i]:7d}"
            lines.append(f"{label:<{width}}  {scores}")
        lines.append("confusion (rows: true, columns: predicted)")
        lines.append(" " * width + "  " + "  ".join(f"{label[:6]:>6}" for label in self.labels))
        for label, row in zip(self.labels, self.matrix):
            lines.append(f"{label:<{width}}  " + "  ".join(f"{count:>6}" for count in row))
        return "\n".join(lines)

    def to_html(self) -> str:
        """Per-class scores and the confusion matrix as one HTML table (rows: true label)."""
        precision, recall, f1 = precision_recall_f1(self.matrix)
        names = [html.escape(label) for label in self.labels]
        head = "".join(f"<th>{name}</th>" for name in names)
        rows = []
        for i, name in enumerate(names):
            peak = max(self.matrix[i]) or 1
            cells = "".join(
                f'<td style="background:rgba(31,119,180,{0.6 * count / peak:.2f})">{count}</td>'
                for count in self.matrix[i]
            )
            rows.append(
                f"<tr><th>{name}</th><td>{precision[i]:.3f}</td><td>{recall[i]:.3f}</td>"
                f"<td>{f1[i]:.3f}</td><td>{self.support[i]}</td>{cells}</tr>"
            )
        return (
            f"<p>accuracy {self.accuracy:.3f}, macro-F1 {self.macro_f1:.3f}</p>"
            "<table><tr><th>true \\ predicted</th><th>precision</th><th>recall</th><th>f1</th>"
            f"<th>support</th>{head}</tr>{''.join(rows)}</table>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def plot(self, path: str | Path) -> Path:
        """Write the confusion matrix as a PNG (counts in the cells, rows = true label)."""
        return plot_confusion_matrix(self, path)


def plot_confusion_matrix(report: ClassificationReport, path: str | Path) -> Path:
    """Draw `report`'s confusion matrix to `path` with matplotlib's file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works in scripts, servers and notebooks alike
    import matplotlib.pyplot as plt

    size = len(report.labels)
    figure, axes = plt.subplots(figsize=(2 + 0.6 * size, 1.6 + 0.6 * size))
    image = axes.imshow(report.matrix, cmap="Blues")
    axes.set_xticks(range(size), report.labels, rotation=45, ha="right")
    axes.set_yticks(range(size), report.labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"accuracy {report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f}", fontsize=9)
    peak = max(map(max, report.matrix)) if size else 0
    for i, row in enumerate(report.matrix):
        for j, count in enumerate(row):
            axes.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color="white" if count > peak / 2 else "black",
            )
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
