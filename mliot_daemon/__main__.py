import sys

from mliot_daemon.cli import main

sys.exit(main())
