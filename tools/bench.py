#!/usr/bin/env python3
"""The benchmark harness (also installed as `osreapi-bench`); the code lives in osreapi/bench.py."""

import sys

from osreapi.bench import main

sys.exit(main())
