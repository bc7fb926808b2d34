"""What one dropped file becomes: the StageRequests to commit and the problems to report. Pure.

Every message of the file (node.hl7v2.batch.split_messages) goes through the shared intake
(connectors.hl7_intake): `staged`, or `failed` when its header cannot be read. Stray bytes outside any
message are kept too, as a `failed` row whose error is the splitter's reason, so nothing in a file is
dropped silently. Problems without bytes (a BTS-1 count that does not match) only send the file to
`error/`.

Each request's `source` is `<file name>:<line>`. Problem texts name lines, message numbers and HL7
fields, never contents: they go into `.reason` files and logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from connectors.hl7_intake import Inspected, inspect, stage_request
from node.hl7v2.batch import FileProblem, split_messages
from node.model import MessageState, StageRequest
from node.settings import FileDropFeed

NO_MESSAGE = "no HL7 message in the file (it holds no MSH segment)"


@dataclass(frozen=True, slots=True)
class Problem:
    """One line of a `.reason` file."""

    line: int
    """1-based line of the file; 0 for the file as a whole."""
    text: str
    message: int | None = None
    """The message's number within the file (from 1), when the problem is about one message."""

    def __str__(self) -> str:
        if not self.line:
            return self.text
        if self.message is not None:
            return f"line {self.line} (message #{self.message}): {self.text}"
        return f"line {self.line}: {self.text}"


@dataclass(slots=True)
class FilePlan:
    """The requests of one file, in file order, and why the file must go to `error/` (empty: archive)."""

    requests: list[StageRequest] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    messages: int = 0
    """How many of `requests` are messages (the rest are stray bytes kept as failed rows)."""

    def reason_text(self) -> str:
        """The `.reason` file: one line per problem, in line order."""
        return "".join(f"{problem}\n" for problem in sorted(self.problems, key=lambda p: p.line))


def plan_file(feed: FileDropFeed, file_name: str, data: bytes, received_at: float) -> FilePlan:
    """Split `data` (the whole file `file_name`) and build one StageRequest per message or stray block."""
    split = split_messages(data)
    plan = FilePlan(messages=len(split.messages))
    for message in split.messages:
        request = stage_request(feed.name, message.payload, inspect(message.payload, feed),
                                received_at=received_at, ack=None, source=f"{file_name}:{message.line}")
        plan.requests.append(request)
        if request.state is MessageState.FAILED:
            plan.problems.append(Problem(message.line, request.error or "", message.index))
    for problem in split.problems:
        plan.problems.append(Problem(problem.line, _without_line_prefix(problem)))
        if problem.payload:
            plan.requests.append(_stray_request(feed, file_name, problem, received_at))
    if not split.messages and not split.problems:
        plan.problems.append(Problem(0, NO_MESSAGE))
    return plan


def _stray_request(feed: FileDropFeed, file_name: str, problem: FileProblem,
                   received_at: float) -> StageRequest:
    """A failed row holding bytes that belong to no message; its error is the splitter's reason."""
    charset = inspect(problem.payload, feed).charset  # how the bytes decode; the header error is moot
    return stage_request(feed.name, problem.payload, Inspected(None, charset, None),
                         received_at=received_at, ack=None, source=f"{file_name}:{problem.line}",
                         extra_error=problem.reason)


def _without_line_prefix(problem: FileProblem) -> str:
    """The splitter's reason without its own `line N: ` prefix (Problem adds it back)."""
    prefix = f"line {problem.line}: "
    return problem.reason[len(prefix):] if problem.reason.startswith(prefix) else problem.reason
