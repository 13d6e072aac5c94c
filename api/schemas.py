"""Request and response bodies, all in one place so the OpenAPI document has one vocabulary.
Response models allow extra fields: the DESIGN contract names the fields tools rely on, and
more may be added without breaking them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

MAX_ID = 2**31 - 1
NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
PathText = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=NO_NUL)]
Comment = Annotated[str, StringConstraints(max_length=10_000, pattern=NO_NUL)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
# SQLite hands datetimes back without a zone; they are UTC, and RFC 3339 needs the offset.
Timestamp = Annotated[
    datetime, AfterValidator(lambda value: value if value.tzinfo else value.replace(tzinfo=UTC))
]


class Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    source_uri: PathText = Field(description="Absolute path on the server, under a source root")
    labels_uri: PathText | None = None
    classes_uri: PathText | None = None


class DatasetOut(Out):
    id: int
    name: str
    source_uri: str
    source_kind: str
    images: int
    classes: list[str]
    class_list: list[str] | None
    created_at: Timestamp
    updated_at: Timestamp


class DatasetList(Out):
    items: list[DatasetOut]


class IngestOut(Out):
    dataset_id: int
    images: int
    decoded: int
    skipped_unchanged: int
    findings: dict[str, int]


class DatasetCreated(Out):
    dataset: DatasetOut
    ingest: IngestOut


class BatchCreate(BaseModel):
    """A delivery: with `labels_uri`, only the images its manifest names are ingested (new ones
    decoded, known ones relabeled); without it, the dataset is refreshed from its source."""

    model_config = ConfigDict(extra="forbid")
    labels_uri: PathText | None = Field(
        default=None,
        description="A `path,label[,split][,vendor][,batch]` manifest (CSV or JSONL) of the delivery",
    )
    vendor: Name | None = Field(default=None, description="Vendor of rows without one")
    batch: Name | None = Field(default=None, description="Batch of rows without one")
    audit: bool = Field(default=False, description="Queue an audit of the dataset afterwards")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Parameters of the queued audit"
    )


class BatchOut(Out):
    id: int
    vendor: str
    name: str
    created_at: Timestamp


class BatchesOut(Out):
    ingest: IngestOut
    items: list[BatchOut]
    audit_id: int | None = None


class AuditCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parameters: dict[str, Any] = Field(default_factory=dict)


class AuditOut(Out):
    id: int
    dataset_id: int
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    stage: str | None
    progress: float
    findings: dict[str, int]
    error: str | None


class FindingOut(Out):
    id: int
    kind: str
    image_ids: list[int]
    images: list[str]
    given_label: str | None
    suggested_label: str | None
    score: float
    is_issue: bool
    severity: str
    status: Literal["open", "confirmed", "dismissed", "relabeled"]
    evidence: dict[str, Any]
    version: int


class FindingList(Out):
    items: list[FindingOut]
    next_cursor: str | None
    counts: dict[str, int] | None = Field(
        description="Findings per kind under the other filters; on the first page only"
    )


class ReviewRecord(Out):
    id: int
    action: str
    new_label: str | None
    comment: str | None
    reviewer: str | None
    created_at: Timestamp


class FindingDetail(FindingOut):
    reviews: list[ReviewRecord]


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["confirm", "dismiss", "relabel", "reopen", "comment"]
    version: Id | None = Field(
        default=None, description="The version you reviewed (or send If-Match)"
    )
    new_label: Name | None = None
    comment: Comment | None = None
    reviewer: Name | None = None


class ReviewOut(Out):
    finding: FindingOut
    review: ReviewRecord


class ClassesOut(Out):
    items: list[dict[str, Any]]
    label_health: float | None
    health_score: float | None


class HierarchyOut(Out):
    order: list[str]
    tree: dict[str, Any]
    blocks: list[list[str]]


class ConfusionOut(Out):
    order: list[str]
    matrix: list[list[int]]
    blocks: list[list[str]]


class LayersOut(Out):
    layers: list[str]
    levels: list[Any]
    separability: list[list[float | None]]


class RateOut(Out):
    images: int
    estimated_errors: float
    estimated_error_rate: float
    ci_low: float
    ci_high: float
    flagged: int


class VendorOut(RateOut):
    vendor: str
    reviewed: int
    confirmed: int
    confirmed_error_rate: float | None


class BatchRateOut(VendorOut):
    batch: str
    batch_id: int | None


class VendorClassOut(RateOut):
    vendor: str
    class_: str = Field(alias="class")


class AgreementOut(Out):
    vendor_a: str
    vendor_b: str
    images: int
    agreement: float


class TrendPoint(Out):
    audit_id: int
    finished_at: str | None
    images: int
    estimated_error_rate: float
    ci_low: float
    ci_high: float


class VendorsOut(Out):
    audit_id: int
    method: str | None
    sharpness: float | None = Field(
        None, description="How much of the model's doubt the estimate reads as label noise"
    )
    sharpness_fitted: bool | None = Field(
        None, description="Fitted by likelihood to probabilities that never saw the vendors"
    )
    held_out_share: float | None = Field(
        None, description="Share of vendor labels judged by a model that never saw their vendor"
    )
    held_out_training_labels: int | None = Field(
        None,
        description="The fewest labels any of those models learned from; below 5,000 the "
        "estimates run together (see `caution`)",
    )
    caution: str | None = Field(
        None, description="Why the estimated rates may be off, when there is a reason"
    )
    confidence_strata: int | None = Field(
        None,
        description="Strata of the model's confidence across which a vendor's error rate may "
        "vary (1: class-conditional noise), chosen by BIC",
    )
    noise_model_bic: dict[str, float] | None = Field(
        None, description="BIC of each candidate number of confidence strata (lower is better)"
    )
    items: list[VendorOut]
    batches: list[BatchRateOut]
    classes: list[VendorClassOut]
    agreement: list[AgreementOut]
    trend: dict[str, list[TrendPoint]]


class DiffOut(Out):
    audit_id: int
    previous_audit_id: int | None
    counts: dict[Literal["new", "persisting", "resolved"], dict[str, int]]
    finding_ids: dict[Literal["new", "persisting", "resolved"], list[int]]
    carried_reviews: dict[str, int]


class Neighbour(Out):
    image_id: int
    path: str
    label: str
    similarity: float


class Duplicate(Out):
    image_id: int
    path: str
    reason: Literal["sha256", "phash", "similarity"]


class Appearance(Out):
    robust_z: float = Field(
        description="How far its mean distance to its nearest images lies "
        "above the dataset's median, in robust standard deviations"
    )
    unusual: bool = Field(description="Above the audit's outlier threshold: likely off-topic")
    distance_ratio: float | None = Field(
        description="Its mean distance to its nearest images over the dataset's median"
    )


class CheckOut(Out):
    audit_id: int | None
    model_available: bool
    label: str
    label_quality: float | None
    suggested_label: str | None
    neighbours: list[Neighbour]
    duplicate: bool
    duplicates: list[Duplicate]
    appearance: Appearance | None = Field(
        default=None,
        description="How unlike the audited images it looks (thumbnails of colour and edges); "
        "present when the audit trained its CNN on the data",
    )


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=NO_NUL)]
    events: list[Literal["audit.completed", "audit.failed", "finding.reviewed"]] = Field(
        min_length=1
    )
    dataset_id: Id | None = None


class WebhookOut(Out):
    id: int
    url: str
    events: list[str]
    dataset_id: int | None
    active: bool
    created_at: Timestamp


class WebhookCreated(WebhookOut):
    secret: str = Field(description="HMAC-SHA256 key of the X-Auditor-Signature header; shown once")


class WebhookList(Out):
    items: list[WebhookOut]


class DeliveryOut(Out):
    id: int
    event: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: Timestamp
    delivered_at: Timestamp | None


class DeliveryList(Out):
    items: list[DeliveryOut]


class Health(Out):
    status: Literal["ok"]
    database: Literal["ok"]


class AuditList(Out):
    items: list[AuditOut]


class CellImage(Out):
    image_id: int
    path: str
    predicted: str
    confidence: float


class CellGroup(Out):
    label: str
    count: int
    images: list[CellImage]


class ConfusionCellOut(Out):
    given: list[str]
    predicted: list[str]
    groups: list[CellGroup]
