// Whether progress written to a file descriptor reaches a person's terminal, where a bar redrawn with carriage
// returns reads well, or a log file (a Slurm job's slurm-%j.out, a redirect), where it must be plain lines.
#pragma once

namespace slearn {

// isatty(fd) is not enough under a launcher: Open MPI's mpirun hands each local rank a pseudo-terminal for its
// output whatever mpirun's own output is, so a rank sees a tty while its lines go to a file. So, in order:
// - fd not a tty: false;
// - inside a Slurm job (SLURM_JOB_ID) that was not given a pseudo-terminal (srun --pty sets SLURM_PTY_PORT):
//   false, the output goes to the job's log;
// - started by mpirun (OMPI_COMM_WORLD_SIZE): whether the launcher's own descriptor (the parent process's
//   same fd: the target of /proc/PPID/fd/N) is a terminal device (/dev/pts/*, /dev/tty*); unreadable: false;
// - otherwise true.
bool writes_to_terminal(int fd);

}  // namespace slearn
