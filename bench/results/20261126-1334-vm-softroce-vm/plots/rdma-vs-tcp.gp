set terminal pngcairo size 1200,1000 font 'sans,10'
set output 'rdma-vs-tcp.png'
set style data histograms; set style histogram clustered gap 1; set style fill solid 0.8 border -1
set xtics rotate by -35 left; set grid ytics; set key outside right top; set bmargin 7
set multiplot layout 3,1 title 'RDMA vs TCP transport, same scenario, same bed'
set ylabel 'total time (s)'
plot 'rdma-vs-tcp.dat' u 2:xtic(1) t 'RDMA' lc 1, '' u 3 t 'TCP' lc 2
set ylabel 'downtime (ms)'
plot 'rdma-vs-tcp.dat' u 4:xtic(1) t 'RDMA' lc 1, '' u 5 t 'TCP' lc 2
set ylabel 'bulk goodput (MB/s)'
plot 'rdma-vs-tcp.dat' u 6:xtic(1) t 'RDMA' lc 1, '' u 7 t 'TCP' lc 2
unset multiplot
