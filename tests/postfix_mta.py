"""Debian's Postfix, started by a test with a config directory of its own (as
../shared/peers/setup.sh runs it): an inbound relay for the test domains that delivers to a
sink and asks Floodgate's policy service and milter.

As root (this sandbox), Postfix runs its daemons as `mail_owner = postfix`; the queue and data
directories are created by `postfix start` (post-install create-missing) with the ownership
it wants, and no service is chrooted (chroot = n in master.cf): nothing to copy into a jail.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support import free_port, port_open, wait_until

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """`postfix -c DIR start` on 127.0.0.1:`port`; `main_cf` lines are added to the base."""

    def __init__(self, sink_port: int, main_cf: str, port: int = 0):
        # its own directory under /tmp, not pytest's: that one is root's alone (0700) and
        # Postfix's daemons, running as `postfix`, must reach their data directory
        self.dir = Path(tempfile.mkdtemp(prefix="floodgate-postfix-"))
        self.dir.chmod(0o755)
        self.port = port or free_port()
        self.sink_port = sink_port
        self.main_cf = main_cf
        self.conf = self.dir / "postfix"

    @property
    def log_path(self) -> Path:
        return self.dir / "postfix.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def write_config(self) -> None:
        self.conf.mkdir(parents=True, exist_ok=True)
        (self.dir / "spool").mkdir(exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        shutil.chown(self.dir / "data", "postfix", "postfix")
        sink = f"smtp:[127.0.0.1]:{self.sink_port}"
        (self.conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.dir}/spool
data_directory = {self.dir}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = {self.dir}
maillog_file = {self.log_path}
myhostname = mx.example.net
mydomain = example.net
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# no test client counts as local: every one meets the Internet-facing restrictions
mynetworks = 127.0.0.254/32
biff = no
readme_directory = no
smtputf8_enable = no
relay_domains = example.org, example.net, catchall.test
relay_recipient_maps =
local_recipient_maps =
local_transport = error:5.1.1 local delivery disabled
alias_maps =
alias_database =
default_transport = {sink}
relay_transport = {sink}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
# a dictionary attack is refused by the policy service, not slowed by Postfix
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_client_connection_rate_limit = 0
{self.main_cf}
""")
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=self.port))

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([POSTFIX, "-c", str(self.conf), *args], capture_output=True,
                              text=True, timeout=60, check=False)

    def start(self) -> Postfix:
        self.write_config()
        started = self.postfix("start")
        if started.returncode != 0:
            raise AssertionError(f"postfix start failed:\n{started.stdout}{started.stderr}"
                                 f"\n{self.log()}")
        wait_until(lambda: port_open("127.0.0.1", self.port), 30, "postfix smtpd")
        return self

    def stop(self) -> None:
        self.postfix("stop")
        wait_until(lambda: self.postfix("status").returncode != 0, 30, "postfix to stop")
        shutil.rmtree(self.dir, ignore_errors=True)
