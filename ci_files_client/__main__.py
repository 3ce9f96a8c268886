"""`python -m ci_files_client` is the same as the `ci-files` command."""

import sys

from ci_files_client.cli import main

sys.exit(main())
