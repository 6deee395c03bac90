"""Selects the compiled per-request byte work or its pure-Python twin (DESIGN §9)."""

from typing import TYPE_CHECKING, TypeAlias

from ._speedups_env import NO_EXTENSIONS, REQUIRE_EXTENSIONS

IMPLEMENTATION: str
#: A clock reading (:func:`perf_counter`'s) or a span of seconds. Annotated with it, a data
#: plane attribute, parameter, result or local is a C double in the compiled build
#: (``_speedups/dataplane.py``): a reading passed along in C makes no float object.
Seconds: TypeAlias = float

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._wire_py import (
        HOP_BY_HOP,
        ForwardLines,
        RequestScan,
        RequestTable,
        ResponseScan,
        UpstreamTable,
        build_head,
        connection_tokens,
        count_answer,
        count_request,
        count_upstream,
        end_to_end,
        forward_head,
        head_fields,
        observe,
        perf_counter,
        read_from,
        renamed_tag_response,
        scan_request,
        scan_response,
        send_to,
        valid_digest,
        valid_name,
        valid_tag,
        whole_response,
        write_to,
    )

    IMPLEMENTATION = "py"
else:
    try:
        from ._wire_c import (
            HOP_BY_HOP,
            ForwardLines,
            RequestScan,
            RequestTable,
            ResponseScan,
            UpstreamTable,
            build_head,
            connection_tokens,
            count_answer,
            count_request,
            count_upstream,
            end_to_end,
            forward_head,
            head_fields,
            observe,
            perf_counter,
            read_from,
            renamed_tag_response,
            scan_request,
            scan_response,
            send_to,
            valid_digest,
            valid_name,
            valid_tag,
            whole_response,
            write_to,
        )

        IMPLEMENTATION = "c"
    except ImportError:
        if REQUIRE_EXTENSIONS:
            raise
        from ._wire_py import (
            HOP_BY_HOP,
            ForwardLines,
            RequestScan,
            RequestTable,
            ResponseScan,
            UpstreamTable,
            build_head,
            connection_tokens,
            count_answer,
            count_request,
            count_upstream,
            end_to_end,
            forward_head,
            head_fields,
            observe,
            perf_counter,
            read_from,
            renamed_tag_response,
            scan_request,
            scan_response,
            send_to,
            valid_digest,
            valid_name,
            valid_tag,
            whole_response,
            write_to,
        )

        IMPLEMENTATION = "py"

__all__ = (
    "HOP_BY_HOP",
    "IMPLEMENTATION",
    "ForwardLines",
    "RequestScan",
    "RequestTable",
    "ResponseScan",
    "Seconds",
    "UpstreamTable",
    "build_head",
    "connection_tokens",
    "count_answer",
    "count_request",
    "count_upstream",
    "end_to_end",
    "forward_head",
    "head_fields",
    "observe",
    "perf_counter",
    "read_from",
    "renamed_tag_response",
    "scan_request",
    "scan_response",
    "send_to",
    "valid_digest",
    "valid_name",
    "valid_tag",
    "whole_response",
    "write_to",
)
