"""Importing features.json into the database: features matched by name, dependencies rewired, ranks kept exact.

Runs inside FeatureQueue.import_specs's transaction. It adds features (as ``pending``) and
rewrites the fields of unclaimed ones, never a status, a lease or a lock: those stay the
queue's to change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.orm import Session

from api import dag, estimates
from api.errors import FeaturesFileError
from api.models import Feature, FeatureDependency, utcnow
from api.records import ImportReport, Status

if TYPE_CHECKING:
    from api.features_file import FeatureSpec

# The fields of a FeatureSpec stored as they are (steps and depends_on are handled apart).
_SPEC_FIELDS = (
    "description", "category", "priority", "verify", "model", "max_attempts", "max_cost_usd", "estimate_minutes",
)  # fmt: skip


def dependency_map(session: Session) -> dict[str, tuple[str, ...]]:
    """``{name: (dependency names...)}`` for every feature in the database."""
    names = dict(session.execute(select(Feature.id, Feature.name)).all())
    edges: dict[str, list[str]] = {name: [] for name in names.values()}
    for fid, dep in session.execute(select(FeatureDependency.feature_id, FeatureDependency.depends_on_id)):
        edges[names[fid]].append(names[dep])
    return {name: tuple(deps) for name, deps in edges.items()}


def import_specs(session: Session, specs: list[FeatureSpec], *, is_sqlite: bool) -> ImportReport:
    """Add new features and update pending ones, matched by name (see FeatureQueue.import_specs).

    Raises FeaturesFileError for an unknown dependency or a cycle through features already in
    the database; the caller's transaction then rolls back, so an import is all or nothing.
    """
    if not is_sqlite:
        # Imports are rare; serialising them against claims keeps unmet_deps exact.
        session.execute(text("LOCK TABLE features IN SHARE ROW EXCLUSIVE MODE"))
    columns = (
        *(Feature.id, Feature.name, Feature.status, Feature.steps, Feature.files),
        *(getattr(Feature, f) for f in _SPEC_FIELDS),
    )
    existing = {r.name: r for r in session.execute(select(*columns))}
    old_edges = dependency_map(session)
    added, updated, unchanged, skipped = [], [], [], []
    rewire: list[FeatureSpec] = []
    for spec in specs:
        row = existing.get(spec.name)
        if row is None:
            added.append(spec)
            rewire.append(spec)
            continue
        changed = (
            any(getattr(row, f) != getattr(spec, f) for f in _SPEC_FIELDS)
            or list(row.steps or []) != list(spec.steps)
            or list(row.files or []) != list(spec.files)
            or set(old_edges.get(spec.name, ())) != set(spec.depends_on)
        )
        if not changed:
            unchanged.append(spec.name)
        elif row.status != Status.PENDING:
            skipped.append(spec.name)
        else:
            updated.append(spec.name)
            rewire.append(spec)
            session.execute(
                update(Feature)
                .where(Feature.id == row.id)
                .values(
                    steps=list(spec.steps),
                    files=list(spec.files) or None,
                    updated_at=utcnow(),
                    **{f: getattr(spec, f) for f in _SPEC_FIELDS},
                )
                .execution_options(synchronize_session=False)
            )

    edges = dict(old_edges)
    edges.update({spec.name: spec.depends_on for spec in rewire})
    for spec in rewire:
        unknown = [d for d in spec.depends_on if d not in edges]
        if unknown:
            raise FeaturesFileError(
                f"feature {spec.name!r} depends on unknown feature(s) {', '.join(map(repr, unknown))}",
                (spec.name, *unknown),
            )
    graph = dag.build_graph(edges)
    cycle = dag.find_cycle(graph)
    if cycle:
        raise FeaturesFileError(f"dependency cycle {' -> '.join(map(repr, cycle))}", tuple(dict.fromkeys(cycle)))

    now = utcnow()
    lengths = dag.critical_path_lengths(graph)
    # Readiness is counted here, not in SQL: an import changes edges, never a status, and the
    # statuses read above cannot move under us (the write lock on SQLite, the table lock on
    # PostgreSQL). A correlated UPDATE took 7.6 s for 10,000 new rows on PostgreSQL.
    passed = {name for name, row in existing.items() if row.status == Status.PASSING}
    unmet = {s.name: sum(d not in passed for d in s.depends_on) for s in rewire}
    if added:
        # New rows carry their rank and readiness from the start.
        session.execute(
            insert(Feature),
            [
                {
                    "name": s.name,
                    "steps": list(s.steps),
                    "files": list(s.files) or None,
                    "status": Status.PENDING,
                    "created_at": now,
                    "updated_at": now,
                    "critical_path": lengths[s.name],
                    "claim_order": dag.claim_order(lengths[s.name], s.priority),
                    "unmet_deps": unmet[s.name],
                    **{f: getattr(s, f) for f in _SPEC_FIELDS},
                }
                for s in added
            ],
        )
    ids = dict(session.execute(select(Feature.name, Feature.id)).all())
    rewired_ids = [ids[s.name] for s in rewire]
    if rewired_ids:
        session.execute(delete(FeatureDependency).where(FeatureDependency.feature_id.in_(rewired_ids)))
        pairs = [{"feature_id": ids[s.name], "depends_on_id": ids[d]} for s in rewire for d in s.depends_on]
        if pairs:
            session.execute(insert(FeatureDependency), pairs)

    # One pass over every row: the new ones already hold their values and drop out here.
    changes = []
    current = select(Feature.name, Feature.priority, Feature.critical_path, Feature.claim_order, Feature.unmet_deps)
    for row in session.execute(current):
        length = lengths[row.name]
        order, waiting = dag.claim_order(length, row.priority), unmet.get(row.name, row.unmet_deps)
        if (row.critical_path, row.claim_order, row.unmet_deps) != (length, order, waiting):
            changes.append({"id": ids[row.name], "critical_path": length, "claim_order": order, "unmet_deps": waiting})
    if changes:
        session.execute(update(Feature), changes)
    # The claim order in use weighs each chain by estimated time (estimates.reorder).
    estimates.reorder(session)

    in_file = {s.name for s in specs}
    return ImportReport(
        added=tuple(s.name for s in added),
        updated=tuple(updated),
        unchanged=tuple(unchanged),
        skipped=tuple(skipped),
        kept=tuple(sorted(n for n in existing if n not in in_file)),
    )
