#!/usr/bin/env bash
# Install Dovecot's imaptest (tests/test_e2e_imaptest.py, bench/imaptest_bench.py)
# with build.sh beside this script, unless the installed copy was built from
# exactly this build.sh and source tarball: then it returns at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
share=/usr/local/share/imaptest
stamp=$share/build.sha256
want=$(cat "$here/build.sh" "$here"/imaptest-*.tar.gz | sha256sum | cut -d' ' -f1)
if [ -x /usr/local/bin/imaptest ] && [ -d "$share/tests" ] && [ -s "$share/stress.mbox" ] &&
   [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "imaptest already installed ($(command -v imaptest))"
  exit 0
fi
bash "$here/build.sh"
echo "$want" > "$stamp"
