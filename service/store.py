"""Persistence: engine, ORM tables, the job state machine and claiming, all in one module.

ORM rows never leave this module: callers get `service.schemas` / `service.specs` models or small dataclasses.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Text,
    TypeDecorator,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql.expression import Exists

from service.cache import LRUCache
from service.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from service.schemas import (
    MAX_TAGS,
    AttemptPublic,
    BestEpoch,
    EventPublic,
    ExperimentPublic,
    ExperimentUpdate,
    ListOrder,
    Status,
    SweepSummary,
    TestMetrics,
    WorkerPublic,
)
from service.specs import EpochMetrics, ExperimentSpec

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# find_checkpoint answers kept per Store: ~380 bytes each, 1.5 MB when full. Each is trusted for a few seconds:
# another API process may delete the experiment, and must not find it still answering /predict here.
FINAL_CHECKPOINTS_CACHED = 4096
FINAL_CHECKPOINT_TTL_S = 5.0

# Which status may follow which. running -> queued is a worker handing its job back (shutdown); a running job
# whose lease expired is claimed again as it is (running -> running, attempt + 1), or failed after max_attempts.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.queued: frozenset({Status.running, Status.cancelled}),
    Status.running: frozenset({Status.running, Status.succeeded, Status.failed, Status.cancelled, Status.queued}),
    Status.succeeded: frozenset(),
    Status.failed: frozenset(),
    Status.cancelled: frozenset(),
}


def _sources(target: Status) -> list[str]:
    return [s.value for s, targets in TRANSITIONS.items() if target in targets]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (SQLite keeps no zone) and always hands back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ExperimentRow(Base):
    __tablename__ = "experiments"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s.value) for s in Status)})", name="status"),
        # The claim query: oldest queued first.
        Index("ix_experiments_status_id", "status", "id"),
        {"sqlite_autoincrement": True},  # a deleted experiment's id (and URLs) never passes to a new one
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A running job whose lease has expired has lost its worker: any worker may claim it again.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    # Incremented by each claim; a worker's writes must carry the attempt it claimed (fencing).
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # How many of its workers stopped renewing their lease (killed, crashed, cut off).
    lost_leases: Mapped[int] = mapped_column(Integer, default=0)
    # Idempotency-Key of the submission and a hash of its body: a retried POST gets the same experiment.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(64))
    current_epoch: Mapped[int] = mapped_column(Integer, default=0)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    best_val_accuracy: Mapped[float | None] = mapped_column(Float)
    best_val_loss: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    # Said to the user at submission (e.g. an augmentation known to hurt on this dataset).
    warnings: Mapped[list] = mapped_column(JSON, default=list)
    # Versions and device that produced the numbers, recorded when training starts.
    environment: Mapped[dict | None] = mapped_column(JSON)
    stop_reason: Mapped[str | None] = mapped_column(Text)
    # The best checkpoint on the dataset's held-out test split, where it has one.
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    rerun_of: Mapped[int | None] = mapped_column(ForeignKey("experiments.id", ondelete="SET NULL"))
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    sweep_params: Mapped[dict | None] = mapped_column(JSON)
    # What a person wrote of the run afterwards (PATCH); never read by training. Tags are a JSON list on the row
    # (sorted), so that reading an experiment costs no second query (a table of tags doubled get_experiment's time).
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    tags: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")


class SweepRow(Base):
    __tablename__ = "sweeps"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    request: Mapped[dict] = mapped_column(JSON)  # base spec and search space, as submitted (defaults filled)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))


class AttemptRow(Base):
    """The claim history: which worker held which attempt of a job, from when until when, and how it ended."""

    __tablename__ = "attempts"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(200))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # succeeded | failed | cancelled | released (handed back at shutdown) | lease expired
    outcome: Mapped[str | None] = mapped_column(String(32))


class MetricRow(Base):
    __tablename__ = "metrics"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float] = mapped_column(Float)
    train_loss_curve: Mapped[list | None] = mapped_column(JSON)
    val_loss: Mapped[float] = mapped_column(Float)
    # The task's metrics (see EpochMetrics); the other task's stay null.
    train_accuracy: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    train_mae: Mapped[float | None] = mapped_column(Float)
    val_mae: Mapped[float | None] = mapped_column(Float)
    val_rmse: Mapped[float | None] = mapped_column(Float)
    val_r2: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    train_samples: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    samples_per_s: Mapped[float] = mapped_column(Float)
    compile_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


# The experiment's best epoch: highest val_accuracy (classification), lowest val_loss (regression, whose accuracy
# is null); the earliest on ties, as `record_epoch` keeps it.
BEST_FIRST = (func.coalesce(-MetricRow.val_accuracy, MetricRow.val_loss), MetricRow.epoch)

# A listing's orders: by id, or by the best epoch's validation accuracy (highest first) or loss (lowest first),
# experiments without a finished epoch (or, by accuracy, a regression) last; ties newest first.
LIST_ORDERS = {
    "newest": (ExperimentRow.id.desc(),),
    "oldest": (ExperimentRow.id.asc(),),
    "val_accuracy": (ExperimentRow.best_val_accuracy.desc().nulls_last(), ExperimentRow.id.desc()),
    "val_loss": (ExperimentRow.best_val_loss.asc().nulls_last(), ExperimentRow.id.desc()),
}


class CheckpointRow(Base):
    """The checkpoint blob lives in the database, so workers and API need no shared filesystem."""

    __tablename__ = "checkpoints"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Last: SQLite reads a row's columns in order, and would otherwise walk the blob's overflow pages to reach
    # the hash (milliseconds on every /predict).
    data: Mapped[bytes] = mapped_column(LargeBinary)


class DatasetRow(Base):
    """An uploaded dataset, decoded once at upload: its description, and its tensors as one blob (no shared
    filesystem between API and workers)."""

    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    meta: Mapped[dict] = mapped_column(JSON)  # task, class names, counts, preprocess, ... (DatasetMeta)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    data: Mapped[bytes] = mapped_column(LargeBinary)  # last, as in `checkpoints`


class EventRow(Base):
    """What happened to an experiment, in order: status changes, finished epochs, progress inside the running
    epoch (only the newest kept) and the worker's log lines. `id` orders them and is the SSE event id."""

    __tablename__ = "events"
    # AUTOINCREMENT: SQLite would otherwise hand a deleted progress event's id to the next event, which a client
    # that saw that id (Last-Event-ID) would then never get.
    __table_args__ = (Index("ix_events_experiment_id_id", "experiment_id", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # status | epoch | progress | log
    data: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WorkerRow(Base):
    """Each worker process, seen every few seconds while it lives: why a job waits, and /metrics."""

    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    device: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    experiment_id: Mapped[int | None] = mapped_column(Integer)  # what it is training, if anything


class ResumePointRow(Base):
    """The state of a job handed back in the middle of an epoch (graceful shutdown): the next worker finishes that
    epoch from the same batch. At most one per experiment; dropped once that epoch is recorded."""

    __tablename__ = "resume_points"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)  # the interrupted epoch
    data: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    attempt: int
    spec: ExperimentSpec


@dataclass(frozen=True)
class Trial:
    spec: ExperimentSpec
    params: dict
    warnings: list[str]


@dataclass(frozen=True)
class CheckpointRef:
    experiment_id: int
    epoch: int
    sha256: str


@functools.cache
def _find_checkpoint_statement() -> Select:
    """Status, best epoch and the wanted checkpoint's hash (NULL when not kept) of one experiment; the wanted
    epoch is :epoch, or the best one when :epoch is NULL."""
    wanted = func.coalesce(bindparam("epoch", type_=Integer), ExperimentRow.best_epoch)
    return (
        select(ExperimentRow.status, ExperimentRow.best_epoch, CheckpointRow.sha256)
        .outerjoin(CheckpointRow, (CheckpointRow.experiment_id == ExperimentRow.id) & (CheckpointRow.epoch == wanted))
        .where(ExperimentRow.id == bindparam("experiment_id", type_=Integer))
    )


@dataclass(frozen=True)
class Idempotency:
    """A client's Idempotency-Key and the hash of the request body it was sent with."""

    key: str
    request_hash: str


@dataclass(frozen=True)
class DatasetUpload:
    name: str
    meta: dict
    sha256: str
    size_bytes: int
    created_at: datetime


class SchemaOutOfDate(RuntimeError):
    pass


class CorruptCheckpoint(Conflict):
    """A stored checkpoint does not match its recorded SHA-256, or cannot be loaded as plain weights."""


class LeaseLost(RuntimeError):
    """The job is no longer this worker's (re-claimed, cancelled or finished): its write was refused."""


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached (a server restarting, a dropped connection, a lock held past its timeout).
    The call's transaction was rolled back, unless the connection dropped during its very commit; a repeated
    epoch write is then refused by the primary key, never stored twice. The driver's error is the `__cause__`."""

    @property
    def reason(self) -> str:
        """What the driver said (e.g. "connection refused"), for logs; the API answers only `detail`, since the
        driver's words can name hosts and users."""
        return str(self.__cause__ or self).strip().partition("\n")[0][:300]


# Failures of the database rather than of the statement, which the same statement may get past later. PostgreSQL's
# SQLSTATE classes: connection (08), rollback on a serialization failure or deadlock (40), resources such as a full
# disk (53), a lock or a database not available now (55), operator intervention such as a shutdown (57), system
# I/O (58). Left out: e.g. a statement over the server's limits (54), which would fail forever if retried.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "55", "57", "58")
# SQLite's, by primary result code (extended names such as SQLITE_IOERR_WRITE start with them); not SQLITE_ERROR,
# which is also "no such table" and bad SQL.
_TRANSIENT_SQLITE_CODES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_NOMEM", "SQLITE_IOERR", "SQLITE_FULL",
                           "SQLITE_CANTOPEN", "SQLITE_PROTOCOL")  # fmt: skip


def _unavailable(context: ExceptionContext) -> DatabaseUnavailable | None:
    """A failure of the database, wherever it surfaces, as the one error callers handle."""
    if context.is_pre_ping:  # the pool reconnects after a failed ping by itself
        return None
    if context.is_disconnect or _transient(context):
        return DatabaseUnavailable("the database cannot be reached for now; try again shortly")
    return None


def _transient(context: ExceptionContext) -> bool:
    if not isinstance(context.sqlalchemy_exception, OperationalError):
        return False  # the statement's own error (a constraint, bad data): not the database's
    sqlstate: str | None = getattr(context.original_exception, "sqlstate", None)  # psycopg's
    sqlite_code: str | None = getattr(context.original_exception, "sqlite_errorname", None)
    if sqlstate is None and sqlite_code is None:
        return True  # connecting failed: refused, or turned away by the server (psycopg gives no SQLSTATE)
    if sqlstate is not None:
        return sqlstate.startswith(_TRANSIENT_SQLSTATE_CLASSES)
    return sqlite_code is not None and sqlite_code.startswith(_TRANSIENT_SQLITE_CODES)


def create_db_engine(url: str, *, idle_transaction_s: float | None = None) -> Engine:
    """`idle_transaction_s` (PostgreSQL): the server ends a session that has waited that long inside a transaction,
    releasing its locks; SQLite's locks belong to the process that holds them."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url)
    else:
        connect_args: dict[str, str] = {}
        if idle_transaction_s is not None:  # after any `?options=` of the URL's own, which this would replace
            timeout = f"-c idle_in_transaction_session_timeout={max(1, round(idle_transaction_s * 1000))}"
            connect_args["options"] = " ".join(filter(None, [parsed.query.get("options"), timeout]))
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    event.listen(engine, "handle_error", _unavailable)
    # A forked child must not reuse its parent's connections; it opens its own.
    weak = weakref.ref(engine)
    os.register_at_fork(after_in_child=lambda: (e := weak()) is not None and e.dispose(close=False))
    return engine


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_conn, _record) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own handling defers it unpredictably).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        cursor.execute("PRAGMA busy_timeout=30000")  # writers queue up instead of failing "database is locked"
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint of the WAL; safe with WAL
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        # Writers take the write lock up front: a deferred transaction that upgrades from read to write
        # fails at once with SQLITE_BUSY instead of waiting out busy_timeout.
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


class Store:
    def __init__(self, url: str, *, idle_transaction_s: float | None = None) -> None:
        self.url = url
        self.engine = create_db_engine(url, idle_transaction_s=idle_transaction_s)
        self._write_engine = self.engine.execution_options(sqlite_immediate=True)
        # find_checkpoint's answers for finished experiments, keyed by (experiment id, epoch or None), with the
        # monotonic time they expire.
        self._final_checkpoints: LRUCache[tuple[CheckpointRef, float]] = LRUCache(FINAL_CHECKPOINTS_CACHED)

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ------------------------------------------------------------------------------------------

    def check_schema(self) -> None:
        """Refuse a database whose schema is not at the code's migration head."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(_alembic_config(self.url)).get_current_head()
        with self.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        if current != head:
            raise SchemaOutOfDate(
                f"database schema is at revision {current or 'none (empty database)'}, the code needs {head}: "
                f"run `alembic upgrade head` (TRAINLAB_DATABASE_URL={make_url(self.url).render_as_string()})"
            )

    def upgrade(self) -> None:
        """`alembic upgrade head`, in-process."""
        from alembic import command

        command.upgrade(_alembic_config(self.url), "head")

    # -- sessions ----------------------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine) as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._write_engine) as session, session.begin():
            yield session

    # -- experiments (API side) --------------------------------------------------------------------------

    def create_experiment(
        self,
        spec: ExperimentSpec,
        *,
        warnings: Sequence[str] = (),
        rerun_of: int | None = None,
        idempotency: Idempotency | None = None,
    ) -> tuple[ExperimentPublic, bool]:
        """Queue an experiment: (it, True). With an idempotency key already used for the same body: (that one,
        False)."""

        def insert(session: Session) -> int:
            # The experiment rerun may have been deleted since it was read; KEY SHARE holds a delete off until this
            # commits (PostgreSQL; SQLite's writers take turns).
            held = {"read": True, "key_share": True}
            if rerun_of is not None and session.get(ExperimentRow, rerun_of, with_for_update=held) is None:
                raise NotFound(f"experiment {rerun_of} not found")
            row = _new_experiment(spec, warnings, rerun_of=rerun_of)
            if idempotency is not None:
                row.idempotency_key, row.request_hash = idempotency.key, idempotency.request_hash
            session.add(row)
            session.flush()
            _event(session, row.id, "status", row.created_at, status=Status.queued.value)
            return row.id

        experiment_id, created = self._create_once(ExperimentRow, insert, idempotency)
        return self.get_experiment(experiment_id), created

    def create_sweep(
        self, name: str, request: dict, trials: list[Trial], idempotency: Idempotency | None = None
    ) -> tuple[int, bool]:
        """The sweep and all its trials as queued experiments, in one transaction; idempotent like experiments."""

        def insert(session: Session) -> int:
            sweep = SweepRow(name=name, request=request, created_at=utcnow())
            if idempotency is not None:
                sweep.idempotency_key, sweep.request_hash = idempotency.key, idempotency.request_hash
            session.add(sweep)
            session.flush()
            for trial in trials:
                row = _new_experiment(trial.spec, trial.warnings)
                row.sweep_id, row.sweep_params = sweep.id, trial.params
                session.add(row)
                session.flush()
                _event(session, row.id, "status", row.created_at, status=Status.queued.value)
            return sweep.id

        return self._create_once(SweepRow, insert, idempotency)

    def _create_once(
        self, table: type[ExperimentRow] | type[SweepRow], insert, idempotency: Idempotency | None
    ) -> tuple[int, bool]:
        """Run `insert` unless a row with the same idempotency key exists. Two racing requests with one key both
        try to insert; the unique constraint lets one through and the other replays it."""
        for _ in range(2):
            if idempotency is not None and (existing := self._replay(table, idempotency)) is not None:
                return existing, False
            try:
                with self._write() as session:
                    return insert(session), True
            except IntegrityError:
                if idempotency is None:
                    raise
        raise Conflict(f"Idempotency-Key {idempotency.key!r}: a concurrent request with this key did not complete")

    def _replay(self, table: type[ExperimentRow] | type[SweepRow], idempotency: Idempotency) -> int | None:
        with self._read() as session:
            row = session.execute(
                select(table.id, table.request_hash).where(table.idempotency_key == idempotency.key)
            ).first()
        if row is None:
            return None
        if row.request_hash != idempotency.request_hash:
            raise InvalidInput(
                f"Idempotency-Key {idempotency.key!r} was already used with a different request body "
                f"({table.__tablename__[:-1]} {row.id}); use a new key for a new request",
                loc=["header", "Idempotency-Key"],
            )
        return row.id

    def get_sweep(self, sweep_id: int) -> tuple[str, dict, list[ExperimentPublic]]:
        """The sweep's name, its request as stored, and its trials' experiments."""
        with self._read() as session:
            sweep = session.get(SweepRow, sweep_id)
            if sweep is None:
                raise NotFound(f"sweep {sweep_id} not found")
            rows = session.scalars(
                select(ExperimentRow).where(ExperimentRow.sweep_id == sweep_id).order_by(ExperimentRow.id)
            ).all()
            return sweep.name, sweep.request, [_public(row) for row in rows]

    def list_sweeps(self, *, limit: int, offset: int) -> list[SweepSummary]:
        """Newest first, each with its trial counts and best validation accuracy and loss so far."""
        done = ExperimentRow.status.in_([Status.succeeded.value, Status.failed.value, Status.cancelled.value])
        query = (
            select(
                SweepRow.id,
                SweepRow.name,
                SweepRow.created_at,
                func.count(ExperimentRow.id).label("trials"),
                func.count(case((done, 1))).label("finished"),
                func.max(ExperimentRow.best_val_accuracy).label("best_val_accuracy"),
                func.min(ExperimentRow.best_val_loss).label("best_val_loss"),
            )
            .join(ExperimentRow, ExperimentRow.sweep_id == SweepRow.id, isouter=True)
            .group_by(SweepRow.id, SweepRow.name, SweepRow.created_at)
            .order_by(SweepRow.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self._read() as session:
            return [SweepSummary.model_validate(row, from_attributes=True) for row in session.execute(query)]

    def find_experiment(self, experiment_id: int) -> ExperimentPublic | None:
        try:
            return self.get_experiment(experiment_id)
        except NotFound:
            return None

    def get_experiment(self, experiment_id: int) -> ExperimentPublic:
        with self._read() as session:
            return _public(self._row(session, experiment_id))

    def list_experiments(
        self,
        *,
        status: Status | None,
        limit: int,
        offset: int,
        dataset: str | None = None,
        model: str | None = None,
        name: str | None = None,
        sweep_id: int | None = None,
        tags: Sequence[str] = (),
        sort: ListOrder = "newest",
    ) -> tuple[list[ExperimentPublic], int]:
        """In the order `sort` names (LIST_ORDERS), and how many match: of a status, a dataset, a model kind, a
        sweep, with `name` in their name (any case), with every one of `tags`."""
        query = select(ExperimentRow)
        if status is not None:
            query = query.where(ExperimentRow.status == status.value)
        if dataset is not None:
            query = query.where(ExperimentRow.spec["dataset"]["name"].as_string() == dataset)
        if model is not None:
            query = query.where(ExperimentRow.spec["model"]["kind"].as_string() == model)
        if name:
            query = query.where(ExperimentRow.name.icontains(name, autoescape=True))  # % and _ match themselves
        if sweep_id is not None:
            query = query.where(ExperimentRow.sweep_id == sweep_id)
        for tag in tags:
            query = query.where(self._tagged(tag))
        with self._read() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(query.order_by(*LIST_ORDERS[sort]).limit(limit).offset(offset)).all()
            return [_public(row) for row in rows], total

    def _tagged(self, tag: str) -> Exists:
        """Whether an experiment's JSON list of tags holds `tag`: each database's own function for a JSON array's
        elements (a scan, as the dataset and model filters are)."""
        sqlite = self.engine.dialect.name == "sqlite"
        elements = (func.json_each if sqlite else func.json_array_elements_text)(ExperimentRow.tags)
        value = elements.table_valued("value").c.value
        return select(value).where(value == tag).exists()

    def list_metrics(self, experiment_id: int, *, since_epoch: int = 0) -> list[EpochMetrics]:
        with self._read() as session:
            self._row(session, experiment_id)
            rows = session.scalars(
                select(MetricRow)
                .where(MetricRow.experiment_id == experiment_id, MetricRow.epoch > since_epoch)
                .order_by(MetricRow.epoch)
            ).all()
            return [EpochMetrics.model_validate(row, from_attributes=True) for row in rows]

    def metrics_of(self, experiment_ids: Sequence[int]) -> dict[int, list[EpochMetrics]]:
        """Each experiment's metrics rows, in one query (a sweep's trials)."""
        found: dict[int, list[EpochMetrics]] = {experiment_id: [] for experiment_id in experiment_ids}
        with self._read() as session:
            rows = session.scalars(
                select(MetricRow)
                .where(MetricRow.experiment_id.in_(experiment_ids))
                .order_by(MetricRow.experiment_id, MetricRow.epoch)
            ).all()
            for row in rows:
                found[row.experiment_id].append(EpochMetrics.model_validate(row, from_attributes=True))
        return found

    def list_attempts(self, experiment_id: int) -> list[AttemptPublic]:
        with self._read() as session:
            self._row(session, experiment_id)
            rows = session.scalars(
                select(AttemptRow).where(AttemptRow.experiment_id == experiment_id).order_by(AttemptRow.attempt)
            ).all()
            return [AttemptPublic.model_validate(row, from_attributes=True) for row in rows]

    def cancel(self, experiment_id: int) -> ExperimentPublic:
        """queued -> cancelled at once; running -> cancelled, and its worker's next write is refused (it stops at
        the next batch boundary). Checkpoints are kept for /predict."""
        now = utcnow()
        with self._write() as session:
            row = self._row(session, experiment_id, lock=True)
            if row.status not in _sources(Status.cancelled):
                raise Conflict(
                    f"experiment {experiment_id} is {row.status}: only queued or running experiments can be cancelled"
                )
            row.status, row.finished_at, row.lease_expires_at = Status.cancelled.value, now, None
            row.stop_reason = f"cancelled by request after epoch {row.current_epoch}"
            _end_attempt(session, experiment_id, now, Status.cancelled.value)
            _event(session, experiment_id, "status", now, status=Status.cancelled.value, stop_reason=row.stop_reason)
            session.flush()
            return _public(row)

    def update_experiment(self, experiment_id: int, update: ExperimentUpdate) -> ExperimentPublic:
        """Rename, annotate or tag an experiment, in any state: nothing its training reads changes."""
        with self._write() as session:
            row = self._row(session, experiment_id, lock=True)
            if update.name is not None:
                row.name, row.spec = update.name, {**row.spec, "name": update.name}
            if update.notes is not None:
                row.notes = update.notes
            if update.tags is not None:
                row.tags = sorted(set(update.tags))
            elif update.add_tags or update.remove_tags:
                tags = (set(row.tags) | set(update.add_tags or ())) - set(update.remove_tags or ())
                if len(tags) > MAX_TAGS:
                    raise InvalidInput(
                        f"experiment {experiment_id} would have {len(tags)} tags; a run has at most {MAX_TAGS}: "
                        "remove some (remove_tags) first",
                        loc=["body", "add_tags"],
                    )
                row.tags = sorted(tags)
            session.flush()
            return _public(row)

    def delete_experiment(self, experiment_id: int) -> None:
        """A finished experiment and everything recorded of it: metrics, checkpoints, events, attempts. 409 while
        it is queued or running, or while a queued or running experiment is to start from its weights."""
        with self._write() as session:
            row = self._row(session, experiment_id, lock=True)
            if TRANSITIONS[Status(row.status)]:
                raise Conflict(
                    f"experiment {experiment_id} is {row.status}: cancel it first "
                    f"(POST /experiments/{experiment_id}/cancel), or wait for it to finish"
                )
            _refuse_if_weights_needed(session, {experiment_id})
            session.execute(delete(ExperimentRow).where(ExperimentRow.id == experiment_id))
        self._final_checkpoints.discard(lambda key: key[0] == experiment_id)

    def delete_sweep(self, sweep_id: int) -> list[int]:
        """A sweep and all its trials, as delete_experiment deletes one; the trials' ids."""
        with self._write() as session:
            if session.get(SweepRow, sweep_id, with_for_update=True) is None:
                raise NotFound(f"sweep {sweep_id} not found")
            trials = session.execute(
                select(ExperimentRow.id, ExperimentRow.status).where(ExperimentRow.sweep_id == sweep_id)
                .order_by(ExperimentRow.id).with_for_update()
            ).all()  # fmt: skip
            if unfinished := [i for i, status in trials if TRANSITIONS[Status(status)]]:
                raise Conflict(
                    f"sweep {sweep_id} has queued or running trials ({', '.join(map(str, unfinished))}): "
                    "cancel them first, or wait for them to finish"
                )
            ids = {i for i, _ in trials}
            _refuse_if_weights_needed(session, ids)
            session.execute(delete(ExperimentRow).where(ExperimentRow.sweep_id == sweep_id))
            session.execute(delete(SweepRow).where(SweepRow.id == sweep_id))
        self._final_checkpoints.discard(lambda key: key[0] in ids)
        return sorted(ids)

    def find_checkpoint(self, experiment_id: int, epoch: int | None = None) -> CheckpointRef:
        """The checkpoint of `epoch`, or of the best validation epoch so far when `epoch` is None. Remembered once
        the experiment has finished, for FINAL_CHECKPOINT_TTL_S."""
        cached = self._final_checkpoints.peek((experiment_id, epoch))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        # One statement, built once: this runs on every /predict, and building it cost more than running it.
        query = _find_checkpoint_statement()
        with self.engine.connect() as conn:  # Core, not an ORM Session: half the cost
            found = conn.execute(query, {"experiment_id": experiment_id, "epoch": epoch}).first()
            if found is None:
                raise NotFound(f"experiment {experiment_id} not found")
            status, best_epoch, sha256 = found
            wanted = epoch if epoch is not None else best_epoch
            if wanted is None:
                raise Conflict(
                    f"experiment {experiment_id} has no checkpoint yet (status {status}); "
                    "the first one is written when its first epoch finishes"
                )
            if sha256 is None:
                kept = conn.scalars(
                    select(CheckpointRow.epoch)
                    .where(CheckpointRow.experiment_id == experiment_id)
                    .order_by(CheckpointRow.epoch)
                ).all()
                raise NotFound(
                    f"experiment {experiment_id} has no checkpoint for epoch {wanted}; "
                    f"kept: {', '.join(map(str, kept)) or 'none'} (spec.checkpoints says which are kept)"
                )
            ref = CheckpointRef(experiment_id, wanted, sha256)
        if not TRANSITIONS[Status(status)]:
            # No status follows this one, and every checkpoint write is fenced on the job still running: only a
            # deletion can change this answer now. (The query was 0.4 ms of a 3.8 ms /predict at one client.)
            self._final_checkpoints.put((experiment_id, epoch), (ref, time.monotonic() + FINAL_CHECKPOINT_TTL_S))
        return ref

    def checkpoint_data(self, ref: CheckpointRef) -> bytes:
        """The checkpoint's bytes, verified against the SHA-256 recorded when it was written."""
        with self._read() as session:
            row = session.execute(
                select(CheckpointRow.data, CheckpointRow.sha256).where(
                    CheckpointRow.experiment_id == ref.experiment_id, CheckpointRow.epoch == ref.epoch
                )
            ).first()
        if row is None:
            raise NotFound(f"experiment {ref.experiment_id} has no checkpoint for epoch {ref.epoch}")
        actual = hashlib.sha256(row.data).hexdigest()
        if actual != row.sha256:
            raise CorruptCheckpoint(
                f"the checkpoint of experiment {ref.experiment_id} epoch {ref.epoch} is damaged: its SHA-256 is "
                f"{actual[:16]}..., {row.sha256[:16]}... was recorded when it was written ({len(row.data)} bytes)"
            )
        return row.data

    def list_checkpoints(self, experiment_id: int) -> list[CheckpointRef]:
        """Newest first."""
        with self._read() as session:
            rows = session.execute(
                select(CheckpointRow.epoch, CheckpointRow.sha256)
                .where(CheckpointRow.experiment_id == experiment_id)
                .order_by(CheckpointRow.epoch.desc())
            ).all()
            return [CheckpointRef(experiment_id, row.epoch, row.sha256) for row in rows]

    def create_dataset(self, name: str, meta: dict, data: bytes) -> DatasetUpload:
        """Store an uploaded dataset; 409 if the name is taken."""
        upload = DatasetUpload(name, meta, hashlib.sha256(data).hexdigest(), len(data), utcnow())
        try:
            with self._write() as session:
                session.add(DatasetRow(**vars(upload), data=data))
        except IntegrityError:
            raise Conflict(f"a dataset named {name!r} exists already; DELETE it first or pick another name") from None
        return upload

    def list_datasets(self, name: str | None = None) -> list[DatasetUpload]:
        """The uploaded datasets' descriptions (never their blobs), or only the one named `name`."""
        columns = DatasetRow.name, DatasetRow.meta, DatasetRow.sha256, DatasetRow.size_bytes, DatasetRow.created_at
        query = select(*columns).order_by(DatasetRow.name)
        if name is not None:
            query = query.where(DatasetRow.name == name)
        with self._read() as session:
            return [DatasetUpload(*row) for row in session.execute(query).all()]

    def find_dataset(self, name: str) -> DatasetUpload | None:
        found = self.list_datasets(name)
        return found[0] if found else None

    def dataset_data(self, name: str) -> bytes:
        """The blob, checked against its SHA-256."""
        with self._read() as session:
            row = session.execute(select(DatasetRow.data, DatasetRow.sha256).where(DatasetRow.name == name)).first()
        if row is None:
            raise NotFound(f"no uploaded dataset named {name!r}")
        if hashlib.sha256(row.data).hexdigest() != row.sha256:
            raise Conflict(f"the stored data of dataset {name!r} is damaged (checksum mismatch)")
        return row.data

    def delete_dataset(self, name: str) -> None:
        """409 while a queued or running experiment trains on it."""
        with self._write() as session:
            if session.get(DatasetRow, name) is None:
                raise NotFound(f"no uploaded dataset named {name!r}")
            using = [i for i, spec in _active_specs(session) if spec["dataset"]["name"] == name]
            if using:
                raise Conflict(
                    f"dataset {name!r} is used by queued or running experiments {', '.join(map(str, using))}: "
                    "cancel them or wait for them to finish"
                )
            session.execute(delete(DatasetRow).where(DatasetRow.name == name))

    @staticmethod
    def _row(session: Session, experiment_id: int, *, lock: bool = False) -> ExperimentRow:
        """The experiment's row, or NotFound; with `lock`, held (FOR UPDATE) and read afresh until the commit."""
        row = session.get(ExperimentRow, experiment_id, with_for_update=lock or None, populate_existing=lock)
        if row is None:
            raise NotFound(f"experiment {experiment_id} not found")
        return row

    # -- jobs (worker side) ------------------------------------------------------------------------------

    def claim(self, worker_id: str, *, lease_s: float, max_attempts: int) -> ClaimedJob | None:
        """Atomically take the oldest job that is queued or whose worker's lease expired, or None.

        One UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING: no two workers get the same job.
        Expired jobs that have already lost `max_attempts` workers are failed instead of claimed."""
        now = utcnow()
        stalled = and_(ExperimentRow.status == Status.running.value, ExperimentRow.lease_expires_at < now)
        claimable = or_(ExperimentRow.status == Status.queued.value, stalled)
        candidate = (
            select(ExperimentRow.id)
            .where(claimable)
            .order_by(ExperimentRow.id)
            .limit(1)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite serialises writers instead (BEGIN IMMEDIATE)
            .scalar_subquery()
        )
        statement = (
            update(ExperimentRow)
            .where(ExperimentRow.id == candidate, claimable)
            .values(
                status=Status.running.value,
                worker_id=worker_id,
                device=None,
                attempt=ExperimentRow.attempt + 1,
                lost_leases=ExperimentRow.lost_leases + case((stalled, 1), else_=0),
                started_at=func.coalesce(ExperimentRow.started_at, now),
                heartbeat_at=now,
                lease_expires_at=now + timedelta(seconds=lease_s),
            )
            .returning(ExperimentRow.id, ExperimentRow.attempt, ExperimentRow.spec)
        )
        with self._write() as session:
            self._fail_exhausted(session, now, stalled, max_attempts)
            claimed = session.execute(statement).one_or_none()
            if claimed is None:
                return None
            _end_attempt(session, claimed.id, now, "lease expired")  # the attempt this one takes over, if any
            session.add(
                AttemptRow(experiment_id=claimed.id, attempt=claimed.attempt, worker_id=worker_id, claimed_at=now)
            )
            _event(
                session, claimed.id, "status", now, status=Status.running.value, attempt=claimed.attempt,
                worker_id=worker_id,
            )  # fmt: skip
        return ClaimedJob(claimed.id, claimed.attempt, ExperimentSpec.model_validate(claimed.spec))

    @staticmethod
    def _fail_exhausted(session: Session, now: datetime, stalled, max_attempts: int) -> None:
        error = (
            f"WorkerLost: the job's worker stopped renewing its lease {max_attempts} times (killed, crashed or cut off "
            "from the database); not retried again (TRAINLAB_MAX_ATTEMPTS)"
        )
        exhausted = session.scalars(
            update(ExperimentRow)
            .where(stalled, ExperimentRow.lost_leases + 1 >= max_attempts)
            .values(
                status=Status.failed.value,
                finished_at=now,
                lease_expires_at=None,
                lost_leases=ExperimentRow.lost_leases + 1,
                error=error,
            )
            .returning(ExperimentRow.id)
        ).all()
        for experiment_id in exhausted:
            _end_attempt(session, experiment_id, now, "lease expired")
            _event(session, experiment_id, "status", now, status=Status.failed.value, error=error)

    def owns(self, job: ClaimedJob) -> bool:
        """Whether the job is still running under this claim (not cancelled, finished or taken over)."""
        with self._read() as session:
            row = session.execute(
                select(ExperimentRow.status, ExperimentRow.attempt).where(ExperimentRow.id == job.id)
            ).first()
        return row is not None and row.status == Status.running.value and row.attempt == job.attempt

    def heartbeat(self, job: ClaimedJob, *, lease_s: float | None = None, **progress: object) -> None:
        """Prove the job is still alive and ours, renewing its lease by `lease_s`; optionally record progress
        fields (e.g. `device`). LeaseLost if it is no longer ours."""
        now = utcnow()
        if lease_s is not None:
            progress["lease_expires_at"] = now + timedelta(seconds=lease_s)
        with self._write() as session:
            _update_owned(session, job, heartbeat_at=now, **progress)

    def rewind(self, job: ClaimedJob, epoch: int) -> None:
        """Forget every epoch after `epoch` (their checkpoints could not be used), so that resuming from `epoch`
        records each later epoch exactly once."""
        with self._write() as session:
            _update_owned(
                session, job, current_epoch=epoch, best_epoch=None, best_val_accuracy=None, best_val_loss=None
            )
            later = MetricRow.experiment_id == job.id, MetricRow.epoch > epoch
            session.execute(delete(MetricRow).where(*later))
            session.execute(
                delete(CheckpointRow).where(CheckpointRow.experiment_id == job.id, CheckpointRow.epoch > epoch)
            )
            session.execute(delete(ResumePointRow).where(ResumePointRow.experiment_id == job.id))
            best = session.execute(
                select(MetricRow.epoch, MetricRow.val_accuracy, MetricRow.val_loss)
                .where(MetricRow.experiment_id == job.id)
                .order_by(*BEST_FIRST)
                .limit(1)
            ).first()
            if best is not None:
                _update_owned(
                    session,
                    job,
                    best_epoch=best.epoch,
                    best_val_accuracy=best.val_accuracy,
                    best_val_loss=best.val_loss,
                )

    def record_epoch(self, job: ClaimedJob, metrics: EpochMetrics, checkpoint: bytes) -> None:
        """One transaction: the epoch's metrics row, its checkpoint, and the experiment's progress."""
        now = utcnow()
        if metrics.val_accuracy is not None:
            better = ExperimentRow.best_val_accuracy < metrics.val_accuracy
        else:  # regression: the lowest validation loss
            better = ExperimentRow.best_val_loss > metrics.val_loss
        improved = or_(ExperimentRow.best_epoch.is_(None), better)
        with self._write() as session:
            # The fenced update goes first: it takes the write lock and proves the job is still ours.
            _update_owned(
                session,
                job,
                current_epoch=metrics.epoch,
                heartbeat_at=now,
                best_epoch=case((improved, metrics.epoch), else_=ExperimentRow.best_epoch),
                best_val_accuracy=case((improved, metrics.val_accuracy), else_=ExperimentRow.best_val_accuracy),
                best_val_loss=case((improved, metrics.val_loss), else_=ExperimentRow.best_val_loss),
            )
            session.add(MetricRow(experiment_id=job.id, created_at=now, **metrics.model_dump()))
            session.execute(delete(EventRow).where(EventRow.experiment_id == job.id, EventRow.kind == "progress"))
            _event(session, job.id, "epoch", now, **metrics.model_dump())
            session.add(
                CheckpointRow(
                    experiment_id=job.id,
                    epoch=metrics.epoch,
                    data=checkpoint,
                    sha256=hashlib.sha256(checkpoint).hexdigest(),
                    size_bytes=len(checkpoint),
                    created_at=now,
                )
            )
            session.execute(delete(ResumePointRow).where(ResumePointRow.experiment_id == job.id))
            session.flush()
            _apply_retention(session, job)

    def finish(
        self,
        job: ClaimedJob,
        status: Status,
        error: str | None = None,
        *,
        stop_reason: str | None = None,
        test: tuple[float, float] | None = None,
        resume_point: tuple[int, bytes] | None = None,
    ) -> None:
        """running -> succeeded | failed | cancelled, or back to queued (released, worker_id cleared).
        `test` is (loss, accuracy) of the best checkpoint on the dataset's test split. `resume_point`, when a job
        is handed back mid-epoch, is (that epoch, the checkpoint to finish it from), stored in the same transaction."""
        if status not in TRANSITIONS[Status.running]:
            raise ValueError(f"illegal transition running -> {status}")
        values: dict = {"status": status.value, "error": error, "stop_reason": stop_reason}
        if test is not None:
            values["test_loss"], values["test_accuracy"] = test
        now = utcnow()
        values["lease_expires_at"] = None
        if status is Status.queued:
            values["worker_id"] = None
        else:
            values["finished_at"] = now
        with self._write() as session:
            _update_owned(session, job, **values)
            _end_attempt(session, job.id, now, "released" if status is Status.queued else status.value)
            _event(session, job.id, "status", now, status=status.value, error=error, stop_reason=stop_reason)
            session.execute(delete(ResumePointRow).where(ResumePointRow.experiment_id == job.id))
            if resume_point is not None and status is Status.queued:
                epoch, data = resume_point
                session.add(
                    ResumePointRow(
                        experiment_id=job.id, epoch=epoch, data=data, sha256=hashlib.sha256(data).hexdigest(),
                        created_at=now,
                    )
                )  # fmt: skip

    def progress(self, job: ClaimedJob, **data: object) -> None:
        """The running epoch's progress, as the experiment's one `progress` event (fenced, like every write)."""
        now = utcnow()
        with self._write() as session:
            _update_owned(session, job, heartbeat_at=now)
            session.execute(delete(EventRow).where(EventRow.experiment_id == job.id, EventRow.kind == "progress"))
            _event(session, job.id, "progress", now, **data)

    def log(self, experiment_id: int, level: str, message: str) -> None:
        """One of the worker's log lines about an experiment (not fenced: a dropped worker's last words count)."""
        try:
            with self._write() as session:
                _event(session, experiment_id, "log", utcnow(), level=level, message=message)
        except IntegrityError:
            pass  # the experiment was deleted after a cancel, while its worker was still stopping

    def events(self, experiment_id: int, *, after: int = 0, kinds: Sequence[str] | None = None,
               limit: int = 1000) -> list[EventPublic]:  # fmt: skip
        """The experiment's events after id `after`, oldest first; 404 for an unknown experiment."""
        with self._read() as session:
            self._row(session, experiment_id)
            query = select(EventRow).where(EventRow.experiment_id == experiment_id, EventRow.id > after)
            if kinds is not None:
                query = query.where(EventRow.kind.in_(kinds))
            rows = session.scalars(query.order_by(EventRow.id).limit(limit)).all()
            return [EventPublic(id=r.id, kind=r.kind, data=r.data, created_at=r.created_at) for r in rows]

    def queue_position(self, experiment_id: int) -> int:
        """1 for the next job a free worker will claim."""
        with self._read() as session:
            ahead = select(func.count()).where(
                ExperimentRow.status == Status.queued.value, ExperimentRow.id < experiment_id
            )
            return session.scalar(ahead) + 1

    def worker_seen(self, worker_id: str, device: str, experiment_id: int | None = None) -> None:
        now = utcnow()
        with self._write() as session:
            row = session.get(WorkerRow, worker_id)
            if row is None:
                session.add(WorkerRow(worker_id=worker_id, device=device, started_at=now, last_seen_at=now,
                                      experiment_id=experiment_id))  # fmt: skip
            else:
                row.device, row.last_seen_at, row.experiment_id = device, now, experiment_id

    def worker_gone(self, worker_id: str) -> None:
        with self._write() as session:
            session.execute(delete(WorkerRow).where(WorkerRow.worker_id == worker_id))

    def live_workers(self, within_s: float) -> list[WorkerPublic]:
        """Workers seen in the last `within_s` seconds."""
        since = utcnow() - timedelta(seconds=within_s)
        with self._read() as session:
            rows = session.scalars(
                select(WorkerRow).where(WorkerRow.last_seen_at >= since).order_by(WorkerRow.worker_id)
            ).all()
            return [WorkerPublic.model_validate(r, from_attributes=True) for r in rows]

    def status_counts(self) -> dict[str, int]:
        with self._read() as session:
            rows = session.execute(select(ExperimentRow.status, func.count()).group_by(ExperimentRow.status)).all()
            return {status.value: 0 for status in Status} | dict(rows)

    def training_totals(self) -> tuple[int, int]:
        """(epochs recorded, training samples processed), over every experiment: for /metrics."""
        with self._read() as session:
            epochs, samples = session.execute(
                select(func.count(), func.coalesce(func.sum(MetricRow.train_samples), 0))
            ).one()
            return int(epochs), int(samples)

    def epoch_duration_histogram(self, buckets: Sequence[float]) -> tuple[list[int], int, float]:
        """(epochs at most each bucket's seconds, all epochs, total seconds): a Prometheus histogram, in SQL."""
        with self._read() as session:
            row = session.execute(
                select(
                    *(func.coalesce(func.sum(case((MetricRow.duration_s <= b, 1), else_=0)), 0) for b in buckets),
                    func.count(),
                    func.coalesce(func.sum(MetricRow.duration_s), 0.0),
                )
            ).one()
            return [int(n) for n in row[: len(buckets)]], int(row[-2]), float(row[-1])

    def resume_point(self, experiment_id: int) -> tuple[int, bytes] | None:
        """(interrupted epoch, checkpoint) of a job handed back mid-epoch; CorruptCheckpoint if it is damaged."""
        with self._read() as session:
            row = session.get(ResumePointRow, experiment_id)
            if row is None:
                return None
            if hashlib.sha256(row.data).hexdigest() != row.sha256:
                raise CorruptCheckpoint(f"the mid-epoch checkpoint of experiment {experiment_id} is damaged")
            return row.epoch, row.data


def _active_specs(session: Session) -> list[tuple[int, dict]]:
    """(id, spec) of every queued or running experiment, oldest first: what still needs its inputs."""
    active = [Status.queued.value, Status.running.value]
    query = select(ExperimentRow.id, ExperimentRow.spec).where(ExperimentRow.status.in_(active))
    return [(i, spec) for i, spec in session.execute(query.order_by(ExperimentRow.id))]


def _refuse_if_weights_needed(session: Session, ids: set[int]) -> None:
    """409 if a queued or running experiment is to start from the weights of one of `ids` (pretrained)."""
    for user, spec in _active_specs(session):
        source = spec["model"].get("pretrained")
        if isinstance(source, dict) and source.get("experiment") in ids:
            raise Conflict(
                f"experiment {user} is queued or running and starts from experiment {source['experiment']}'s "
                "weights: cancel it first, or wait for it to finish"
            )


def _update_owned(session: Session, job: ClaimedJob, **values) -> None:
    """Update a job's row only while it is running under this worker's attempt (fencing), else LeaseLost."""
    result = session.execute(
        update(ExperimentRow)
        .where(
            ExperimentRow.id == job.id,
            ExperimentRow.attempt == job.attempt,
            ExperimentRow.status == Status.running.value,
        )
        .values(**values)
    )
    if result.rowcount != 1:
        raise LeaseLost(f"experiment {job.id} attempt {job.attempt} is no longer running under this worker")


def _end_attempt(session: Session, experiment_id: int, now: datetime, outcome: str) -> None:
    """Close the experiment's open attempt, if any, with how it ended."""
    session.execute(
        update(AttemptRow)
        .where(AttemptRow.experiment_id == experiment_id, AttemptRow.ended_at.is_(None))
        .values(ended_at=now, outcome=outcome)
    )


def _apply_retention(session: Session, job: ClaimedJob) -> None:
    """Delete the checkpoints that are neither among the last `keep_last` epochs nor the best `keep_best`."""
    policy = job.spec.checkpoints
    of_job = MetricRow.experiment_id == job.id
    last = select(MetricRow.epoch).where(of_job).order_by(MetricRow.epoch.desc()).limit(policy.keep_last)
    best = select(MetricRow.epoch).where(of_job).order_by(*BEST_FIRST).limit(policy.keep_best)
    session.execute(
        delete(CheckpointRow).where(
            CheckpointRow.experiment_id == job.id,
            CheckpointRow.epoch.not_in(last.scalar_subquery()),
            CheckpointRow.epoch.not_in(best.scalar_subquery()),
        )
    )


def _new_experiment(spec: ExperimentSpec, warnings: Sequence[str], *, rerun_of: int | None = None) -> ExperimentRow:
    return ExperimentRow(
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        status=Status.queued.value,
        created_at=utcnow(),
        attempt=0,
        lost_leases=0,
        current_epoch=0,
        warnings=list(warnings),
        rerun_of=rerun_of,
    )


def _public(row: ExperimentRow) -> ExperimentPublic:
    spec = ExperimentSpec.model_validate(row.spec)
    best = None
    if row.best_epoch is not None:
        best = BestEpoch(epoch=row.best_epoch, val_accuracy=row.best_val_accuracy, val_loss=row.best_val_loss)
    return ExperimentPublic(
        id=row.id,
        name=row.name,
        notes=row.notes,
        tags=row.tags,
        status=Status(row.status),
        spec=spec,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        current_epoch=row.current_epoch,
        epochs=spec.epochs,
        best=best,
        attempt=row.attempt,
        worker_id=row.worker_id,
        heartbeat_at=row.heartbeat_at,
        lease_expires_at=row.lease_expires_at,
        device=row.device,
        environment=row.environment,
        error=row.error,
        stop_reason=row.stop_reason,
        test=None if row.test_accuracy is None else TestMetrics(loss=row.test_loss, accuracy=row.test_accuracy),
        rerun_of=row.rerun_of,
        sweep_id=row.sweep_id,
        sweep_params=row.sweep_params,
        warnings=row.warnings or [],
    )


def _event(session: Session, experiment_id: int, kind: str, now: datetime, **data: object) -> None:
    session.add(EventRow(experiment_id=experiment_id, kind=kind, data=data, created_at=now))
