"""``python -m ndt.validate``: the validity benchmark (see `ndt.validate.benchmark`)."""

import sys

from ndt.validate.benchmark import main

sys.exit(main())
