"""One block job decided (README "Where things are"): `pipeline.JobPipeline.handle` reads top to
bottom: intake (read and check) -> admission (reply rule, tenant, account) -> at most once
(once.py) -> execution (execute.py) -> a `Decision` the consumer settles."""

from worker.jobs.admission import Admission, admit
from worker.jobs.answers import ResultBody, failed, finish, result_json, result_too_large
from worker.jobs.execute import Execution
from worker.jobs.intake import Incoming, Request, read_request
from worker.jobs.pipeline import Checked, Decision, JobPipeline, Settle

__all__ = [
    "Admission",
    "Checked",
    "Decision",
    "Execution",
    "Incoming",
    "JobPipeline",
    "Request",
    "ResultBody",
    "Settle",
    "admit",
    "failed",
    "finish",
    "read_request",
    "result_json",
    "result_too_large",
]
