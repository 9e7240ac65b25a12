// peak_rss COMMAND [ARG...]: runs COMMAND, waits for it, and prints on
// stderr "peak_rss_kib N", the largest resident set of COMMAND or of any
// descendant it waited for, in KiB; exits with COMMAND's status (128 + the
// signal if one killed it).
//
// For tests of how much memory a process needs: a child's peak resident
// set counts what it inherited at fork(), so a command started straight
// from a test process that holds a large image would report that image.
// Started from this small program, it reports its own.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: peak_rss COMMAND [ARG...]\n");
    return 2;
  }
  const pid_t child = fork();
  if (child < 0) {
    std::fprintf(stderr, "peak_rss: fork: %s\n", std::strerror(errno));
    return 2;
  }
  if (child == 0) {
    execvp(argv[1], argv + 1);
    std::fprintf(stderr, "peak_rss: %s: %s\n", argv[1], std::strerror(errno));
    _exit(127);
  }
  int status = 0;
  rusage usage{};
  while (wait4(child, &status, 0, &usage) < 0 && errno == EINTR) {
  }
  std::fprintf(stderr, "peak_rss_kib %ld\n", usage.ru_maxrss);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}
