set terminal pngcairo size 1000,600 font 'sans,11'
set output 'throughput-over-time.png'
set title 'Throughput through one migration: 32M-uniform400-q2-r1 (per pre-copy iteration; last step = downtime)'
set xlabel 'time since start (s)'; set ylabel 'MB/s'; set grid; set key top right
plot 'throughput-rdma.dat' w l lw 2 t 'RDMA', 'throughput-tcp.dat' w l lw 2 t 'TCP', 21.139 w l dt 2 lc rgb 'gray40' t 'ib\_write\_bw (2 QP)'
