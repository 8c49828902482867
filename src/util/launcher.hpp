// A rank whose launcher died must not go on: nobody collects its output or its exit code any more, and a
// rank that outlives a SIGKILLed mpirun keeps writing into the run directory. The user's next attempt then
// finds the run locked, or worse, an orphan still writing (a plot half drawn, a checkpoint pruned late) after
// the directory was cleared for a fresh start. So a rank started by an MPI launcher dies with it.
#pragma once

namespace slearn {

// Under a launcher (Open MPI's OMPI_COMM_WORLD_SIZE, or PMIX_RANK / PMI_RANK as PMIx, srun and MPICH's hydra
// set): asks Linux to SIGKILL this process when its parent, the launcher or its local daemon (mpirun, orted,
// hydra_pmi_proxy, slurmstepd), ends (prctl PR_SET_PDEATHSIG), and ends at once if the parent is already gone.
// A launcher that stops its job normally outlives its ranks, so this only acts when the launcher itself was
// killed or crashed. Elsewhere (a plain `slearn_dist run` from a shell, nohup) it does nothing: the shell may
// exit first. Returns whether the tie was made.
bool end_with_launcher();

}  // namespace slearn
