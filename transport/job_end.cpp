#include "transport/job_end.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace shardload {
namespace {

/// The command name and start time (field 22) of /proc/PID/stat; false when it cannot be read.
/// Only async-signal-safe calls: the watcher uses it after fork() in a threaded process.
bool read_stat(pid_t pid, char* comm, size_t comm_size, unsigned long long* start) {
  char path[64] = "/proc/";
  char digits[24];
  int n = 0;
  for (unsigned long v = static_cast<unsigned long>(pid); v || n == 0; v /= 10) {
    digits[n++] = static_cast<char>('0' + v % 10);
  }
  size_t at = std::strlen(path);
  while (n) path[at++] = digits[--n];
  std::memcpy(path + at, "/stat", 6);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[1024];
  ssize_t len = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (len <= 0) return false;
  buf[len] = '\0';
  char* open_paren = std::strchr(buf, '(');
  char* close_paren = std::strrchr(buf, ')');
  if (!open_paren || !close_paren || close_paren < open_paren) return false;
  size_t clen = static_cast<size_t>(close_paren - open_paren - 1);
  if (clen >= comm_size) clen = comm_size - 1;
  std::memcpy(comm, open_paren + 1, clen);
  comm[clen] = '\0';
  // Fields after the command: state is field 3; the start time is field 22.
  int field = 2;
  char* p = close_paren + 1;
  while (*p && field < 21) {
    if (*p == ' ') ++field;
    ++p;
  }
  unsigned long long v = 0;
  while (*p >= '0' && *p <= '9') v = v * 10 + static_cast<unsigned long long>(*p++ - '0');
  *start = v;
  return true;
}

bool is_launcher(const char* comm) {
  for (const char* name : {"mpirun", "mpiexec", "orterun", "prterun"}) {
    if (std::strcmp(comm, name) == 0) return true;
  }
  return false;
}

}  // namespace

bool end_launcher_after(double seconds) {
  const char* off = std::getenv("SHARDLOAD_END_LAUNCHER");
  if (off && std::strcmp(off, "0") == 0) return false;
  const pid_t launcher = ::getppid();
  char comm[64];
  unsigned long long start = 0;
  if (!read_stat(launcher, comm, sizeof comm, &start) || !is_launcher(comm)) return false;
  // The watcher holds no descriptor of the rank's (the launcher waits for the rank's output
  // pipes and sockets to close), so it cannot print: the rank says what it armed.
  const std::string note = "shardload: if " + std::string(comm) + " (pid " +
                           std::to_string(launcher) + ") is still running " +
                           std::to_string(static_cast<int>(seconds)) +
                           " s after MPI_Abort (a node it waits for is unreachable), it is ended "
                           "with SIGKILL\n";
  ssize_t ignored = ::write(STDERR_FILENO, note.data(), note.size());
  (void)ignored;
  const pid_t child = ::fork();
  if (child < 0) return false;
  if (child == 0) {
    ::setsid();  // out of the rank's process group, which the launcher kills
    if (::fork() != 0) ::_exit(0);
    ::prctl(PR_SET_NAME, "shardload-watch", 0, 0,
            0);  // not to be taken for the rank
                 // After fork() in a threaded process: only async-signal-safe calls from here on.
#ifdef SYS_close_range
    if (::syscall(SYS_close_range, 0U, ~0U, 0U) != 0)
#endif
    {
      for (int fd = 0; fd < 65536; ++fd) ::close(fd);
    }
    timespec wait{static_cast<time_t>(seconds), 0};
    while (::nanosleep(&wait, &wait) != 0) {
    }
    char now_comm[64];
    unsigned long long now_start = 0;
    if (read_stat(launcher, now_comm, sizeof now_comm, &now_start) && now_start == start &&
        std::strcmp(now_comm, comm) == 0) {
      ::kill(launcher, SIGKILL);
    }
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  return true;
}

}  // namespace shardload
