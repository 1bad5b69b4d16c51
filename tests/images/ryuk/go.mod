// pytest-aikernel's own stand-in for testcontainers' Ryuk reaper (see README.md). Standard
// library only: no requirements, hence no go.sum.
module aikernel.invalid/ryuk-standin

go 1.24
