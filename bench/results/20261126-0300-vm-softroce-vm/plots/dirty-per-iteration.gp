set terminal pngcairo size 1000,600 font 'sans,11'
set output 'dirty-per-iteration.png'
set title 'Dirty bytes left after each pre-copy iteration (the last is sent during downtime)'
set xlabel 'iteration (0 = bulk pass)'; set ylabel 'MiB dirty'; set logscale y; set grid
set xrange [-0.5:*]; set xtics 1
set key outside right
plot 'dirty-32M-uniform100-q2-r1-rdma.dat' w lp lw 2 pt 7 lc 1 t '32M uniform:100 RDMA measured', 'dirty-model-32M-uniform100-q2-r1-rdma.dat' w lp dt 2 pt 6 lc 1 t 'model', 'dirty-32M-uniform400-q2-r1-tcp.dat' w lp lw 2 pt 7 lc 2 t '32M uniform:400 TCP measured', 'dirty-model-32M-uniform400-q2-r1-tcp.dat' w lp dt 2 pt 6 lc 2 t 'model', 'dirty-64M-uniform100-q2-r1-rdma.dat' w lp lw 2 pt 7 lc 3 t '64M uniform:100 RDMA measured', 'dirty-model-64M-uniform100-q2-r1-rdma.dat' w lp dt 2 pt 6 lc 3 t 'model', 'dirty-64M-uniform400-q2-r1-rdma.dat' w lp lw 2 pt 7 lc 4 t '64M uniform:400 RDMA measured', 'dirty-model-64M-uniform400-q2-r1-rdma.dat' w lp dt 2 pt 6 lc 4 t 'model', 'dirty-64M-uniform400-q2-r1-tcp.dat' w lp lw 2 pt 7 lc 5 t '64M uniform:400 TCP measured', 'dirty-model-64M-uniform400-q2-r1-tcp.dat' w lp dt 2 pt 6 lc 5 t 'model', 'dirty-128M-uniform100-q2-r1-rdma.dat' w lp lw 2 pt 7 lc 6 t '128M uniform:100 RDMA measured', 'dirty-model-128M-uniform100-q2-r1-rdma.dat' w lp dt 2 pt 6 lc 6 t 'model'
