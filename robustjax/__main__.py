import sys

from robustjax.cli import main

sys.exit(main())
