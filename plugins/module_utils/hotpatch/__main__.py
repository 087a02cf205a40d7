"""Command line of the engine: ``python -m hotpatch <verb> --request FILE`` -> one JSON document on stdout.

Exit codes (errors.py): 0 success, 1 some processes failed or were refused, 2 bad request, 3 package rejected,
4 signature rejected, 5 image rejected, 6 host lock busy, 7 platform/backend failure (also unexpected internal
errors, with kind "internal"), 8 journal needs an operator, 99 killed at a fault step (tests only). Diagnostics
go to stderr; anything a component prints goes to stderr too, so stdout holds only the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any, Dict, List, Optional

from .errors import BackendError, EngineError, RequestError
from .host.request import VERBS, load_request
from .host.result import VerbResult
from .host.verbs import execute
from .osupdate.cli import KB_VERBS, run_kb_file

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise RequestError(f"bad command line: {message}; usage: python -m hotpatch <verb> --request FILE")


def main(argv: Optional[List[str]] = None) -> int:
    """Run one verb; prints the result JSON on stdout and returns the exit code."""
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but the result may reach the real stdout
    verb = "unknown"
    document: Optional[Dict[str, Any]] = None  # the KB verbs (osupdate/) answer with their own document
    try:
        parser = _Parser(prog="hotpatch", add_help=False)
        parser.add_argument("verb", choices=VERBS + KB_VERBS)
        parser.add_argument("--request", required=True)
        args = parser.parse_args(argv)
        verb = args.verb
        if verb in KB_VERBS:
            code, document = run_kb_file(verb, args.request)
        else:
            code, result = execute(load_request(verb, args.request))
    except EngineError as exc:
        result = VerbResult(verb, error={"kind": exc.kind, "message": str(exc)})
        code = exc.exit_code
    except Exception as exc:  # a bug: still one JSON document, and the traceback on stderr
        traceback.print_exc()
        result = VerbResult(verb, error={"kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
        code = BackendError.exit_code
    finally:
        sys.stdout = out
    out.write(json.dumps(document if document is not None else result.to_dict(), sort_keys=True) + "\n")
    out.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
