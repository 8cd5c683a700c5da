"""A cohort's records and events as arrays: what every solver of a model works from."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.cohort import Cohort
from ..models import Model
from .events import Schedule, schedule


class _Selected:
    """A record array of a `Design.subset`, selected from the parent design's on first use: the
    solver reads only times and analytes, and a virtual population of 10^5 patients would copy
    the others (data values, LLOQs, ...) for nothing."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, design, owner=None):
        if design is None:
            return self
        parent, rows = design._selected_from
        value = getattr(parent, self.name)[rows]
        value.setflags(write=False)
        vars(design)[self.name] = value  # once: the instance attribute hides the descriptor
        return value


class Design:
    """The records of a cohort as arrays for the compiled solver: sorted by subject and time, in
    the model's time unit, t = 0 at each subject's first dose; with the events of `schedule`."""

    #: record arrays a subset selects when they are first read
    records = _Selected()
    data_time = _Selected()
    value = _Selected()
    lloq = _Selected()
    censored = _Selected()

    def __init__(self, model: Model, cohort: Cohort, analytes=None):
        converted = cohort.in_time_unit(model.time_unit)
        self.schedule: Schedule = schedule(model, converted)
        obs = converted.observations
        wanted = set(analytes or model.analytes)
        keep = ~obs["mdv"] & obs["analyte"].isin(wanted & set(model.analytes))
        subject_pos = pd.Index(cohort.subject_ids).get_indexer(obs["subject"])
        frame = obs[keep].assign(_s=subject_pos[keep.to_numpy()])
        frame = frame.sort_values(["_s", "time"], kind="stable")
        self.model = model
        self.subjects = cohort.subject_ids
        self.records = frame.index.to_numpy()  # positions in cohort.observations
        self.subject_index = frame["_s"].to_numpy()
        self.time = frame["time"].to_numpy(float) - self.schedule.offset[self.subject_index]
        self.data_time = cohort.observations["time"].to_numpy(float)[self.records]  # the cohort's unit
        self.analyte_names = list(model.analytes)
        self.analyte = pd.Index(self.analyte_names).get_indexer(frame["analyte"]).astype(np.int64)
        self.value = frame["value"].to_numpy(float)
        self.lloq = frame["lloq"].to_numpy(float)
        self.censored = frame["censored"].to_numpy(np.int64)
        counts = np.bincount(self.subject_index, minlength=len(self.subjects))
        self.start = _offsets(counts)
        self.dose_state = np.array([model.states.index(d.target) for d in model.dosing], dtype=np.int64)
        self.max_events = int(np.max(np.diff(self.schedule.start), initial=0))
        _freeze(self)

    @classmethod
    def on_grid(cls, model: Model, C: np.ndarray, times: np.ndarray, analytes) -> "Design":
        """A design for N = C.shape[1] subjects with covariates C (n_covariates, N), each given
        one bolus at t = 0 of its `dose` covariate (to the default target, when the model has
        dosing targets), observed at every time of `times` for every analyte of `analytes`;
        `grid_index` gives each record's position in `times`."""
        from .events import BOLUS

        N, T = C.shape[1], len(times)
        self = cls.__new__(cls)
        self.model = model
        self.subjects = [str(i) for i in range(N)]
        names = list(model.analytes)
        per = np.array([names.index(a) for a in analytes], dtype=np.int64)
        order = np.argsort(times, kind="stable")
        grid = np.repeat(order[None, :], len(per), axis=0).T.ravel()  # time-major within subject
        self.grid_index = np.tile(grid, N)
        self.subject_index = np.repeat(np.arange(N), T * len(per))
        self.time = np.asarray(times, float)[self.grid_index]
        self.data_time = self.time
        self.analyte_names = names
        self.analyte = np.tile(np.tile(per, T), N)
        self.records = np.arange(len(self.time))
        self.value = np.full(len(self.time), np.nan)
        self.lloq = np.full(len(self.time), np.nan)
        self.censored = np.zeros(len(self.time), np.int64)
        self.start = np.arange(N + 1, dtype=np.int64) * T * len(per)
        dose = C[0]
        n_ev = np.where(dose > 0, 1, 0) if model.dosing else np.zeros(N, int)
        self.schedule = Schedule(
            _offsets(n_ev), np.zeros(n_ev.sum()),
            np.full(n_ev.sum(), BOLUS, np.int64), np.zeros(n_ev.sum(), np.int64),
            np.ascontiguousarray(dose[n_ev > 0], float), np.zeros(n_ev.sum()), np.zeros(n_ev.sum()),
            np.arange(N + 1, dtype=np.int64), np.full(N, -np.inf), np.ascontiguousarray(C.T, float), np.zeros(N))
        self.dose_state = np.array([model.states.index(d.target) for d in model.dosing], dtype=np.int64)
        self.max_events = int(n_ev.max(initial=0))
        _freeze(self)
        return self

    def repeated(self, copies: int) -> "Design":
        """The design of `copies` x N subjects: copy c of subject i is subject c N + i, with its
        records and events. One solver call then evaluates many parameter sets of the same
        subjects (importance samples of their random effects) instead of one call per set."""
        N = len(self.subjects)
        return self.subset(np.tile(np.arange(N), copies),
                           [f"{c}:{subject}" for c in range(copies) for subject in self.subjects])

    def subset(self, index: np.ndarray, names: list[str] | None = None) -> "Design":
        """The design of subjects `index` (positions, repeats allowed): subject j of the result is
        subject index[j] of this one, with its records, events and covariates; built from the
        arrays alone (virtual patients drawn from a fitted cohort share their donors' designs)."""
        index = np.asarray(index, dtype=np.int64)
        s = self.schedule
        out = type(self).__new__(type(self))
        vars(out).update(vars(self))
        out.subjects = names if names is not None else [f"{j}:{self.subjects[i]}" for j, i in enumerate(index)]
        rows, counts = _blocks(self.start, index)
        out.subject_index = np.repeat(np.arange(len(index)), counts)
        for name in ("records", "data_time", "value", "lloq", "censored"):
            vars(out).pop(name, None)
        out._selected_from = (self, rows)
        out.time = self.time[rows]
        out.analyte = self.analyte[rows]
        if hasattr(self, "grid_index"):
            out.grid_index = self.grid_index[rows]
        out.start = _offsets(counts)
        events, event_counts = _blocks(s.start, index)
        segments, segment_counts = _blocks(s.seg_start, index)
        out.schedule = Schedule(
            _offsets(event_counts), *(a[events] for a in (s.time, s.kind, s.target, s.amount, s.length, s.ss)),
            _offsets(segment_counts), s.seg_time[segments], s.covariates[segments], s.offset[index])
        _freeze(out)
        return out

    @property
    def n_obs(self) -> int:
        return len(self.time)

    def kernel_arguments(self) -> tuple:
        """The design's arrays in the order of the kernels' arguments after P."""
        s = self.schedule
        return (s.covariates, s.seg_start, s.seg_time)

    def event_arguments(self) -> tuple:
        s = self.schedule
        return (s.start, s.time, s.kind, s.target, s.amount, s.length, s.ss, self.dose_state)


def _freeze(design: Design) -> None:
    """Make the design's arrays read-only: they are values; and the sampler's compiled log density
    hands its (writable) copies to the kernel typed read-only (`pkpd.fit.op._read_only`), so the
    kernels are compiled for one signature, not two."""
    arrays = [v for v in vars(design).values() if isinstance(v, np.ndarray)]
    arrays += [v for v in vars(design.schedule).values() if isinstance(v, np.ndarray)]
    for array in arrays:
        array.setflags(write=False)


def _blocks(offsets: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, counts): the positions of blocks `index` of an offsets array, concatenated
    (block i spans offsets[i]:offsets[i + 1]), and each selected block's size."""
    counts = np.diff(offsets)[index]
    starts = np.repeat(offsets[index] - _offsets(counts)[:-1], counts)
    return starts + np.arange(int(counts.sum()), dtype=np.int64), counts


def _offsets(counts: np.ndarray) -> np.ndarray:
    """Start offsets (len(counts) + 1,) of consecutive blocks of the given sizes."""
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
