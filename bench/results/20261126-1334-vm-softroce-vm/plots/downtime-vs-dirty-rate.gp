set terminal pngcairo size 1000,600 font 'sans,11'
set output 'downtime-vs-dirty-rate.png'
set title 'Downtime vs guest dirty rate (limit 300 ms, at most 10 iterations)'
set xlabel 'guest page-write rate (MB/s)'; set ylabel 'downtime (ms)'; set grid
set logscale y; set key top left
plot 'downtime-rdma.dat' u 1:2 w p pt 7 ps 1.5 lc 1 t 'RDMA measured (32–128 MiB)', 'downtime-model-rdma.dat' w l lw 2 dt 2 lc 1 t 'RDMA model, 64 MiB at 15.1 MB/s', 'downtime-tcp.dat' u 1:2 w p pt 7 ps 1.5 lc 2 t 'TCP measured (32–128 MiB)', 'downtime-model-tcp.dat' w l lw 2 dt 2 lc 2 t 'TCP model, 64 MiB at 26.4 MB/s'
