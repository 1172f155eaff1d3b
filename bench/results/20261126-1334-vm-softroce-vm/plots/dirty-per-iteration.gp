set terminal pngcairo size 1000,600 font 'sans,11'
set output 'dirty-per-iteration.png'
set title 'Dirty bytes left after each pre-copy iteration (the last is sent during downtime)'
set xlabel 'iteration (0 = bulk pass)'; set ylabel 'MiB dirty'; set logscale y; set grid
set xrange [-0.5:*]; set xtics 1
set key outside right
plot 'dirty-32M-uniform400-q2-r1-rdma.dat' w lp lw 2 pt 7 lc 1 t '32M uniform:400 RDMA measured', 'dirty-model-32M-uniform400-q2-r1-rdma.dat' w lp dt 2 pt 6 lc 1 t 'model', 'dirty-64M-uniform1500-q2-r1-rdma.dat' w lp lw 2 pt 7 lc 2 t '64M uniform:1500 RDMA measured', 'dirty-model-64M-uniform1500-q2-r1-rdma.dat' w lp dt 2 pt 6 lc 2 t 'model'
