"""
Tests of L{mdpy.backends.files.maildir.removeStaleTmpFiles}: what a crash left in
the C{tmp/} folders goes at the server's start, what another process may be
writing now stays.
"""

import os
import time

from twisted.internet.testing import MemoryReactorClock

from mdpy.config import Config
from mdpy.backends.files.maildir import STALE_TMP_AGE, MaildirStore, removeStaleTmpFiles
from mdpy.tap import buildService

NOW = 2_000_000_000


def touch(path, age, now=NOW):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"half a message")
    os.utime(path, (now - age, now - age))
    return path


def test_oldTmpFilesGoAndRecentOnesStay(tmp_path):
    root = str(tmp_path / "mail")
    store = MaildirStore(root, runInThread=lambda f, *args: f(*args))
    store.createAccount("joe@example.test")
    inbox = store.folderPath("joe@example.test")
    sent = store.folderPath("joe@example.test", "Sent")
    old = [
        touch(os.path.join(inbox, "tmp", "1.crashed"), STALE_TMP_AGE + 1),
        touch(os.path.join(sent, "tmp", "2.crashed"), 7 * 86400),
    ]
    kept = [
        touch(os.path.join(inbox, "tmp", "3.writing"), 5),
        touch(os.path.join(sent, "tmp", "4.young"), STALE_TMP_AGE - 60),
        touch(os.path.join(inbox, "new", "5.delivered"), 30 * 86400),
        touch(os.path.join(inbox, "cur", "6.read:2,S"), 30 * 86400),
    ]
    os.makedirs(os.path.join(inbox, "tmp", "a-directory"))
    assert sorted(removeStaleTmpFiles(root, now=NOW)) == sorted(old)
    assert not any(os.path.exists(path) for path in old)
    assert all(os.path.exists(path) for path in kept)
    assert os.path.isdir(os.path.join(inbox, "tmp", "a-directory"))
    assert removeStaleTmpFiles(root, now=NOW) == []


def test_aFileReadRecentlyStays(tmp_path):
    """
    The specification counts access too: a file read an hour ago is in use.
    """
    root = str(tmp_path / "mail")
    path = touch(os.path.join(root, "example.test", "joe", "tmp", "1.x"), 40 * 3600)
    os.utime(path, (NOW - 3600, NOW - 40 * 3600))
    assert removeStaleTmpFiles(root, now=NOW) == []


def test_missingRootIsNothingToDo(tmp_path):
    assert removeStaleTmpFiles(str(tmp_path / "nowhere")) == []


def test_serverStartRemovesThem(tmp_path):
    path = tmp_path / "mdpy.ini"
    path.write_text("[server]\ndata_dir = data\nhostname = mx.example.test\ndomain = example.test\n")
    now = time.time()
    old = touch(str(tmp_path / "data" / "mail" / "example.test" / "joe" / "tmp" / "1.crashed"),
                STALE_TMP_AGE + 600, now)
    young = touch(str(tmp_path / "data" / "mail" / "example.test" / "joe" / "tmp" / "2.writing"), 1, now)
    buildService(Config.load(str(path)), reactor=MemoryReactorClock())
    assert not os.path.exists(old)
    assert os.path.exists(young)
