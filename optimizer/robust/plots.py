"""Figures of robust evaluations: DVH bands over the scenarios.

Returns a ``matplotlib.figure.Figure`` (no backend chosen, no pyplot state), like
:mod:`optimizer.plots`.
"""

from __future__ import annotations

import matplotlib
from matplotlib.figure import Figure

from ..errors import PlotError


def dvh_bands(bands: dict, title: str = "DVH bands over the scenarios") -> Figure:
    """DVH bands of several plans side by side: ``bands`` is ``{PLAN_LABEL: {STRUCTURE: band}}``
    with each band from :func:`optimizer.evaluate.robust.dvh_band` (dose in Gy, volume in %).
    One panel per plan; per structure the nominal DVH as a line and the scenario min-max as a
    shaded band."""
    if not isinstance(bands, dict) or not bands:
        raise PlotError("bands: expected {plan label: {structure: band}} with at least one plan")
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    fig = Figure(figsize=(5.5 * len(bands), 4.2), layout="constrained")
    axes = fig.subplots(1, len(bands), sharey=True, squeeze=False)[0]
    for ax, (label, per) in zip(axes, bands.items()):
        if not isinstance(per, dict) or not per:
            raise PlotError(f"bands['{label}']: expected {{structure: band}}")
        for k, (name, b) in enumerate(per.items()):
            missing = {"dose_Gy", "nominal", "lower", "upper"} - set(b)
            if missing:
                raise PlotError(f"bands['{label}']['{name}']: missing {sorted(missing)}")
            c = colors[k % len(colors)]
            ax.fill_between(b["dose_Gy"], b["lower"], b["upper"], color=c, alpha=0.3, linewidth=0)
            ax.plot(b["dose_Gy"], b["nominal"], color=c, label=f"{name} (nominal; band: scenarios)")
        ax.set_title(label)
        ax.set_xlabel("dose (Gy)")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 102)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("volume (%)")
    fig.suptitle(title)
    return fig
