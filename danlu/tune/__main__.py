"""``python -m danlu.tune STUDY --index I ...``: one worker process of ``danlu tune --jobs N``."""

from danlu.tune._worker import worker_main

raise SystemExit(worker_main())
