"""Matplotlib figures of plans: DVHs, dose colorwash slices with contours, fluence and spot maps.

Every function returns a ``matplotlib.figure.Figure``; save it with ``fig.savefig(path)``, or
show it in a notebook by leaving it as a cell's value. Figures are built without pyplot: this
module never picks or switches the matplotlib backend, and its figures are not registered with
pyplot (no open-figure build-up in long sweeps; ``plt.show()`` does not show them). Invalid input
raises :class:`optimizer.errors.PlotError`.
"""

from __future__ import annotations

import numbers

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .errors import GeometryError, PlotError
from .evaluate import dose_volume as _dose_volume


def _default_colors() -> list:
    return matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])


def _color(structure, i):
    if structure.color:
        return structure.color
    colors = _default_colors()
    return colors[i % len(colors)]


def _check_plan(plan, name: str = "plan") -> None:
    """A plan: anything with a 3-D ``dose`` and a ``patient`` (an :class:`optimizer.Plan`)."""
    if not (hasattr(plan, "dose") and hasattr(plan, "patient") and hasattr(plan.patient, "structures")):
        hint = " (load a saved plan first: optimizer.Plan.load(path))" if isinstance(plan, (str, bytes)) \
            or hasattr(plan, "__fspath__") else ""
        raise PlotError(f"{name}: expected an optimizer.Plan, got {type(plan).__name__}{hint}")


def _names(names, patient, plan_name: str = "plan") -> list[str]:
    """Structure names to draw: ``names`` (one name or a list of names; each must exist in
    ``patient``), default all of the patient's structures."""
    if names is None:
        return list(patient.structure_names)
    if isinstance(names, str):
        names = [names]
    elif isinstance(names, bytes) or not hasattr(names, "__iter__"):
        raise PlotError(f"names: expected a structure name or a list of names, got {names!r}")
    names = list(names)
    for n in names:
        if not isinstance(n, str):
            raise PlotError(f"names: expected structure names (strings), got {n!r} ({type(n).__name__})")
        try:
            patient.structure(n)
        except GeometryError as e:
            raise PlotError(f"names: {e} (in {plan_name}.patient)") from None
    return names


def _finite_values(values, name: str) -> np.ndarray:
    """``values`` as a float array without NaN or infinities, else PlotError naming ``name``."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise PlotError(f"{name}: expected an array of numbers, got {type(values).__name__}") from None
    if not np.all(np.isfinite(arr)):
        raise PlotError(f"{name}: contains NaN or infinite values; replace them first (e.g. np.nan_to_num) "
                        "to draw the rest")
    return arr


def _slice_index(value, name: str, size: int, axis: str) -> int:
    """An index into an axis of ``size`` voxels: an integer (or integral float) in 0..size-1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not np.isfinite(value) or not float(value).is_integer() or not 0 <= value < size:
        raise PlotError(f"{name}: expected an integer slice index along {axis} in 0..{size - 1}, "
                        f"got {value!r}")
    return int(value)


def dvh(plans, names=None, labels=None, dose_fn=None, xlabel="Dose (Gy)", title=None):
    """Cumulative DVHs of one plan or several (solid, dashed, dotted ... per plan).

    Parameters
    ----------
    plans : a Plan or a list of Plans on the same patient
    names : a structure name or a list of names to show (default all)
    labels : one legend label per plan (a single string for a single plan); default "plan 1",
        "plan 2", ... for several plans and none for one. Each curve's legend entry is the
        structure name followed by its plan's label.
    dose_fn : optional ``f(plan, structure_name) -> voxel values`` to plot another quantity
        (e.g. BED); default the physical dose
    """
    plans = list(plans) if isinstance(plans, (list, tuple)) else [plans]
    if not plans:
        raise PlotError("plans: expected a Plan or a non-empty list of Plans")
    for k, p in enumerate(plans):
        _check_plan(p, "plans" if len(plans) == 1 else f"plans[{k}]")
    if isinstance(labels, str) and len(plans) == 1:
        labels = [labels]
    if labels is None:
        labels = [f"plan {i + 1}" for i in range(len(plans))] if len(plans) > 1 else [""]
    elif isinstance(labels, str) or len(labels) != len(plans):
        raise PlotError(f"labels: expected one label per plan ({len(plans)}), got {labels!r}")
    names = _names(names, plans[0].patient, "plans[0]" if len(plans) > 1 else "plans")
    if not names:
        raise PlotError("names: no structures to draw (the patient has none, or names is empty)")
    for k, p in enumerate(plans[1:], start=1):
        _names(names, p.patient, f"plans[{k}]")
    styles = ["-", "--", ":", "-."]
    values = []
    for k, p in enumerate(plans):
        where = "plans" if len(plans) == 1 else f"plans[{k}]"
        row = []
        for n in names:
            v = _finite_values(dose_fn(p, n) if dose_fn else p.structure_dose(n),
                               f"{where} structure '{n}' {'dose_fn values' if dose_fn else 'dose'}").ravel()
            if v.size == 0:
                raise PlotError(f"{where} structure '{n}': has no voxels; nothing to draw")
            row.append(v)
        values.append(row)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    top = max(max(float(np.max(v)) for vs in values for v in vs) * 1.05, 1e-9)
    bins = np.linspace(0, top, 500)
    for k, (plan, label) in enumerate(zip(plans, labels)):
        for i, n in enumerate(names):
            s = plan.patient.structure(n)
            _, vol = _dose_volume.dvh(values[k][i], bins=bins)
            ax.plot(bins, vol, styles[k % 4], color=_color(s, i),
                    label=f"{n} {label}".strip())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Volume (%)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title or "Cumulative DVH")
    fig.tight_layout()
    return fig


def dose_slices(plan, values=None, label="Dose (Gy)", z_index=None, x_index=None, names=None,
                cmap="jet", threshold_pct=5.0, title=None):
    """Axial and sagittal colorwash of a 3-D map (default the plan dose) with structure contours.

    Values below ``threshold_pct`` % of the maximum are transparent so the CT shows through.
    Slices default to the centre of the first target (else of the first non-empty structure,
    else of the grid). ``values`` must be finite (NaN, e.g. LETd where the dose is
    low, is refused: replace it first); ``names`` is a structure name or a list of names (default
    all; a patient without structures is drawn without contours).
    """
    _check_plan(plan)
    p = plan.patient
    shape = tuple(p.grid.shape)
    where = "plan.dose" if values is None else "values"
    values = _finite_values(plan.dose if values is None else values, where)
    if values.shape != shape:
        raise PlotError(f"{where}: expected a 3-D map of the grid's shape {shape} [z, y, x], "
                        f"got {values.shape}")
    if isinstance(threshold_pct, (bool, np.bool_)) or not isinstance(threshold_pct, numbers.Real) \
            or not (np.isfinite(threshold_pct) and 0 <= threshold_pct <= 100):
        raise PlotError(f"threshold_pct: expected a percentage from 0 to 100, got {threshold_pct!r}")
    names = _names(names, p)
    targets = [s for s in p.structures if s.role == "target" and s.mask.any()] \
        or [s for s in p.structures if s.mask.any()]
    if targets:
        zz, _, xx = np.nonzero(targets[0].mask)
        z_default, x_default = int(np.median(zz)), int(np.median(xx))
    else:
        z_default, x_default = shape[0] // 2, shape[2] // 2
    z_index = z_default if z_index is None else _slice_index(z_index, "z_index", shape[0], "z")
    x_index = x_default if x_index is None else _slice_index(x_index, "x_index", shape[2], "x")
    (z, y, x) = p.grid.axes_mm()
    vmax = float(np.max(values)) or 1.0
    fig = Figure(figsize=(12, 4.8))
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [len(x), len(z) * p.grid.spacing_mm[0]
                                                            / p.grid.spacing_mm[2]]})
    views = [
        (axes[0], p.ct_hu[z_index], values[z_index], lambda m: m[z_index],
         [x[0], x[-1], y[-1], y[0]], "x (mm)", "y (mm)", f"axial z = {z[z_index]:.1f} mm"),
        (axes[1], p.ct_hu[:, :, x_index].T, values[:, :, x_index].T, lambda m: m[:, :, x_index].T,
         [z[0], z[-1], y[-1], y[0]], "z (mm)", "y (mm)", f"sagittal x = {x[x_index]:.1f} mm"),
    ]
    im = None
    for ax, ct, val, cut, extent, xl, yl, ttl in views:
        ax.imshow(ct, cmap="gray", vmin=-1000, vmax=1000, extent=extent, interpolation="nearest")
        shown = np.ma.masked_less(val, vmax * threshold_pct / 100)
        im = ax.imshow(shown, cmap=cmap, vmin=0, vmax=vmax, alpha=0.55, extent=extent,
                       interpolation="bilinear")
        for i, n in enumerate(names):
            s = p.structure(n)
            m = cut(s.mask)
            if m.any():
                xs = np.linspace(extent[0], extent[1], m.shape[1])
                ys = np.linspace(extent[3], extent[2], m.shape[0])
                ax.contour(xs, ys, m.astype(float), levels=[0.5], colors=[_color(s, i)], linewidths=1.2)
                ax.plot([], [], color=_color(s, i), label=n)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(ttl)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="lower right")
    fig.colorbar(im, ax=axes, label=label, shrink=0.85)
    if title:
        fig.suptitle(title)
    return fig


def fluence_maps(plan, maps=None, title="Fluence maps (beamlet weights)"):
    """One panel per beam with the beam's 2-D weight map (rows: v, columns: u, mm at isocentre).

    ``maps`` : one 2-D array per beam of ``plan.beams``, default ``plan.fluence_maps()``."""
    _check_plan(plan)
    where = "plan.fluence_maps()" if maps is None else "maps"
    maps = plan.fluence_maps() if maps is None else maps
    if isinstance(maps, (str, bytes, np.ndarray)) or not hasattr(maps, "__len__"):
        raise PlotError(f"maps: expected a list of 2-D arrays, one per beam, got {type(maps).__name__}")
    if len(maps) == 0:
        raise PlotError(f"{where}: no maps to draw (expected one 2-D array per beam, "
                        f"{len(plan.beams)} beams)")
    if len(maps) != len(plan.beams):
        raise PlotError(f"{where}: expected one 2-D array per beam ({len(plan.beams)} beams), "
                        f"got {len(maps)}")
    maps = [_finite_values(m, f"{where}[{i}]") for i, m in enumerate(maps)]
    for i, m in enumerate(maps):
        if m.ndim != 2 or m.size == 0:
            raise PlotError(f"{where}[{i}]: expected a non-empty 2-D array [row, col], got shape {m.shape}")
    n = len(maps)
    cols = min(n, 5)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(2.6 * cols, 2.6 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    vmax = max(float(m.max()) for m in maps) or 1.0
    im = None
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.axis("off")
            continue
        beam = plan.beams[i]
        w = beam.get("beamlet_mm", 1.0)
        u0, v0 = beam.get("u0_mm", 0.0), beam.get("v0_mm", 0.0)
        m = maps[i]
        extent = [u0 - w / 2, u0 + (m.shape[1] - 0.5) * w, v0 - w / 2, v0 + (m.shape[0] - 0.5) * w]
        im = ax.imshow(m, origin="lower", cmap="viridis", vmin=0, vmax=vmax, extent=extent)
        ax.set_title(f"gantry {beam['gantry_deg']:g}°", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8, label="weight")
    fig.suptitle(title)
    return fig


def spot_maps(plan_or_maps, beams=None, beam=None, title=None):
    """Spot weights of a proton plan.

    With ``beam=None``: per beam, the map summed over energy layers (top; rows v, columns u, mm
    at isocentre) and the total weight of each energy layer (bottom). With ``beam=b``: one panel
    per energy layer of beam b (deepest first), showing where each layer's Bragg peaks are placed.

    Parameters
    ----------
    plan_or_maps : a proton Plan (beamlet table with ``beam``, ``layer``, ``row``, ``col``), or
        the output of :func:`optimizer.spot_maps` (one ``{layer: 2-D array}`` dict per beam)
    beams : beam list (``plan.beams``) for axis extents, angles and layer energies; taken from
        the plan when one is given
    beam : index of the beam to show layer by layer, or None for the overview
    """
    if isinstance(plan_or_maps, (list, tuple)):
        maps = list(plan_or_maps)
    else:
        plan = plan_or_maps
        beams = plan.beams if beams is None else beams
        bl = plan.beamlets
        for key in ("layer", "row", "col"):
            if key not in bl:
                raise PlotError(f"plan_or_maps: beamlet table has no '{key}' column; expected a proton plan")
        maps = []
        for b, bm in enumerate(plan.beams):
            sel = np.flatnonzero(np.asarray(bl["beam"]) == b)
            layers = {}
            for layer in np.unique(np.asarray(bl["layer"])[sel]):
                s = sel[np.asarray(bl["layer"])[sel] == layer]
                m = np.zeros(tuple(int(v) for v in bm["map_shape"]))
                np.add.at(m, (np.asarray(bl["row"])[s], np.asarray(bl["col"])[s]), plan.weights[s])
                layers[int(layer)] = m
            maps.append(layers)
    if not maps:
        raise PlotError("plan_or_maps: no beams to show")
    if beam is not None and not (0 <= int(beam) < len(maps)):
        raise PlotError(f"beam: expected an index in 0..{len(maps) - 1}, got {beam!r}")

    def info(b):
        return beams[b] if beams is not None and b < len(beams) else {}

    def extent(b, shape):
        bm = info(b)
        s = bm.get("spot_spacing_mm", 1.0)
        u0, v0 = bm.get("u0_mm", 0.0), bm.get("v0_mm", 0.0)
        return [u0 - s / 2, u0 + (shape[1] - 0.5) * s, v0 - s / 2, v0 + (shape[0] - 0.5) * s]

    def name(b):
        bm = info(b)
        return f"gantry {bm['gantry_deg']:g}°" if "gantry_deg" in bm else f"beam {b + 1}"

    if beam is not None:
        b = int(beam)
        layers = sorted(maps[b])
        cols = min(len(layers), 6)
        rows = int(np.ceil(len(layers) / cols))
        fig = Figure(figsize=(2.3 * cols + 1.2, 2.3 * rows + 0.8))
        axes = fig.subplots(rows, cols, squeeze=False)
        vmax = max(float(maps[b][k].max()) for k in layers) or 1.0
        energies, ranges = info(b).get("energies"), info(b).get("ranges_mm")
        im = None
        for i, ax in enumerate(axes.ravel()):
            if i >= len(layers):
                ax.axis("off")
                continue
            m = maps[b][layers[i]]
            im = ax.imshow(np.ma.masked_equal(m, 0.0), origin="lower", cmap="viridis", vmin=0, vmax=vmax,
                           extent=extent(b, m.shape), interpolation="nearest")
            ax.set_facecolor("0.85")
            label = f"layer {layers[i]}"
            if energies is not None and layers[i] < len(energies):
                label = f"{float(energies[layers[i]]):.1f} MeV"
                if ranges is not None and layers[i] < len(ranges):
                    label += f", R {float(ranges[layers[i]]):.0f} mm"
            ax.set_title(label, fontsize=8)
            ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="spot weight")
        fig.suptitle(title or f"Spot maps by energy layer, {name(b)} (u, v in mm at isocentre)")
        return fig

    n = len(maps)
    fig = Figure(figsize=(4.0 * n + 1.2, 6.6))
    axes = fig.subplots(2, n, squeeze=False, gridspec_kw={"height_ratios": [3, 1.4], "wspace": 0.4})
    summed = [sum(m.values()) if m else np.zeros((1, 1)) for m in maps]
    vmax = max(float(np.max(s)) for s in summed) or 1.0
    im = None
    for b in range(n):
        m = summed[b]
        ax = axes[0, b]
        im = ax.imshow(np.ma.masked_equal(m, 0.0), origin="lower", cmap="viridis", vmin=0, vmax=vmax,
                       extent=extent(b, m.shape), interpolation="nearest")
        ax.set_facecolor("0.85")
        n_spots = sum(int(np.count_nonzero(x)) for x in maps[b].values())
        ax.set_title(f"{name(b)}\n{len(maps[b])} layers, {n_spots} spots > 0", fontsize=9)
        ax.set_xlabel("u (mm)", fontsize=8)
        ax.set_ylabel("v (mm)", fontsize=8)
        ax.tick_params(labelsize=7)
        layers = sorted(maps[b])
        per_layer = [float(maps[b][k].sum()) for k in layers]
        energies = info(b).get("energies")
        ax2 = axes[1, b]
        if energies is not None and len(energies) >= len(layers):
            e = [float(energies[k]) for k in layers]
            width = 0.8 * (min(np.abs(np.diff(e))) if len(e) > 1 else 1.0)
            ax2.bar(e, per_layer, width=width, color="tab:blue")
            ax2.set_xlabel("layer energy (MeV)", fontsize=8)
        else:
            ax2.bar(layers, per_layer, color="tab:blue")
            ax2.set_xlabel("energy layer (0 = deepest)", fontsize=8)
        ax2.set_ylabel("weight per layer", fontsize=8)
        ax2.tick_params(labelsize=7)
        ax2.grid(alpha=0.3)
    fig.colorbar(im, ax=axes[0, :].tolist(), shrink=0.8, label="spot weight summed over layers")
    fig.suptitle(title or "Spot maps (proton PBS), weights in units of 1e8 protons")
    return fig
